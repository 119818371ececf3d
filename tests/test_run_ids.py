"""Run ids never move: every committed spec (each profile) expands to the ids its results are stored under."""
import json
from pathlib import Path

import pytest
import yaml

from bench.study.config import resolve, run_id
from bench.study.spec import load_study

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((REPO / "tests" / "data" / "run_ids.json").read_text())


def test_the_quickstart_and_a_table1f_run_keep_their_ids():
    ids = [r.run_id for r in load_study(REPO / "ablations" / "quickstart.yaml").runs]
    assert ids == ["810f8514f875", "1d371d561df5", "ce27d4be8356"]
    table1f = load_study(REPO / "ablations" / "mae" / "table1f_mask_sampling.yaml", profile="small")
    assert table1f.runs[0].run_id == PINNED["ablations/mae/table1f_mask_sampling.yaml:small"][0]


@pytest.mark.parametrize("key", sorted(PINNED))
def test_every_committed_spec_keeps_its_run_ids(key):
    path, profile = key.rsplit(":", 1)
    assert [r.run_id for r in load_study(REPO / path, profile=profile or None).runs] == PINNED[key]


def test_the_method_key_leaves_mae_ids_unchanged():
    """`method: mae` (the default) is not hashed; another method would be."""
    base = yaml.safe_load((REPO / "ablations" / "quickstart.yaml").read_text())["base"]
    assert run_id(resolve(base)) == run_id(resolve({**base, "method": "mae"}))
    assert resolve(base)["method"] == "mae"
