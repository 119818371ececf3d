"""Run ids never move: every committed spec (each profile) expands to the ids its results are stored under.

The ids are those of the data on a machine set up by install.sh: Debian's Fashion-MNIST in
/usr/share/datasets/fashion-mnist, no ImageNet. A run with a limit is a subset of that data, whose
identity is in its id (data.identity); without the files it is not identified and has another id,
so those entries are skipped there. (The limited runs' ids moved once, when a limit came to draw a
seeded, class-stratified subset instead of the first N images: other images, other results. Block
masking's runs moved when it took BEiT's pre-training parameters and a top-up that keeps the blocks'
shape — other masks; the MAE small profiles' when their batch became 64 — another schedule; the
quickstart's when it was resized for a slow laptop — another spec.)
"""
import json
from pathlib import Path

import pytest
import yaml

from bench.data import DEBIAN_DATASETS
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.study.spec import load_study

REPO = Path(__file__).resolve().parents[1]
PINNED = json.loads((REPO / "tests" / "data" / "run_ids.json").read_text())
HAS_FASHION = (DEBIAN_DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(autouse=True)
def _debian_data_only(monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)  # the pinned ids are those of Debian's files


def _needs_the_data(study) -> bool:
    return any(r.config["data"]["name"] == "fashion_mnist" and (r.config["data"]["train_limit"] is not None
                                                                 or r.config["data"]["test_limit"] is not None)
               for r in study.runs)


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_the_quickstart_and_a_table1f_run_keep_their_ids():
    runs = load_study(REPO / "ablations" / "quickstart.yaml").runs
    assert [r.run_id for r in runs if not r.config["baseline"]] == ["e89f2d5c17f1", "67ba5413c5a5", "4471a3975d87"]
    # and its two baselines (random init, raw pixels), shared by every study of the same model, data and evals
    assert [r.config["baseline"] for r in runs if r.config["baseline"]] == ["random_init", "raw_pixels"]
    table1f = load_study(REPO / "ablations" / "mae" / "table1f_mask_sampling.yaml", profile="small")
    assert table1f.runs[0].run_id == PINNED["ablations/mae/table1f_mask_sampling.yaml:small"][0]


@pytest.mark.parametrize("key", sorted(PINNED))
def test_every_committed_spec_keeps_its_run_ids(key):
    path, profile = key.rsplit(":", 1)
    study = load_study(REPO / path, profile=profile or None)
    if not HAS_FASHION and _needs_the_data(study):
        pytest.skip("Debian's dataset-fashion-mnist is not installed: a limited run on it is not identified")
    assert [r.run_id for r in study.runs if not r.config["baseline"]] == PINNED[key]  # the settings' runs


def test_the_method_key_leaves_mae_ids_unchanged():
    """`method: mae` (the default) is not hashed; another method would be."""
    base = yaml.safe_load((REPO / "ablations" / "quickstart.yaml").read_text())["base"]
    assert run_id(resolve(base)) == run_id(resolve({**base, "method": "mae"}))
    assert resolve(base)["method"] == "mae"
