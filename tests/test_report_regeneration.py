"""The committed reports come back byte for byte from their runs: each reports/<study>/runs.csv holds one
row per run (its flattened config and results), from which the result folders are rebuilt and
`mimbench report` run again — no training. (runs.csv carries the `method` column, a config key added
after these runs: with_added_later fills it in as "mae". A key added after a report was committed
comes back as a new column at its old value; the committed columns must come back unchanged.)"""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench import masking
from bench.cli import main
from bench.study.run_ids import ADDED_LATER

REPO = Path(__file__).resolve().parent.parent
STRING_RESULTS = {"run_id", "study", "device", "host", "git_commit", "finetune_feature", "linear_probe_feature",
                  "torch_version", "timm_version", "slurm_job_id", "pretrained_by"}
TOP_LEVEL_CONFIG = {"seed", "method"}


def parse(cell: str):
    """A runs.csv cell as the value the config or result held."""
    if cell == "":
        return None
    if cell in ("True", "False"):
        return cell == "True"
    if cell.startswith("["):
        return json.loads(cell)
    for kind in (int, float):
        try:
            return kind(cell)
        except ValueError:
            pass
    return cell


def holds_none(column: str, row: dict) -> bool:
    """Whether an empty masking.params.* cell is a None of this run's strategy, not another strategy's key."""
    parts = column.split(".")
    if column.startswith("masking.params.") and len(parts) == 3:
        return parts[2] in masking.create_strategy(row["masking.strategy"]).defaults
    parent = ".".join(parts[:-1]) + "."
    return any(k.startswith(parent) and v != "" for k, v in row.items() if k != column)


def rebuild(study: str, spec: Path, root: Path) -> Path:
    """results/<study>/<run_id>/{config.yaml,result.json} and study.json from the committed runs.csv."""
    committed = REPO / "reports" / study
    frame = pd.read_csv(committed / "runs.csv", dtype=str, keep_default_na=False)
    joined = [c for c in frame.columns if " / " in c]  # a zip group's axis, added by the report
    config_cols = [c for c in frame.columns if ("." in c or c in TOP_LEVEL_CONFIG) and c not in joined]
    study_dir = root / "results" / study
    for row in frame.to_dict("records"):
        config = {"masking": {"params": {}}, "pretrain": {"target_params": {}}}
        for col in config_cols:
            value = parse(row[col])
            if value is None and col.startswith(("masking.params.", "pretrain.target_params.")) \
                    and not holds_none(col, row):
                continue
            node = config
            *parents, leaf = col.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        result = {c: row[c] if c in STRING_RESULTS and row[c] else parse(row[c])
                  for c in frame.columns if c not in config_cols and c not in joined}
        folder = study_dir / row["run_id"]
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=True))
        (folder / "result.json").write_text(json.dumps(result | {"config": config}, indent=2, sort_keys=True))
    raw = yaml.safe_load(spec.read_text())
    description = (committed / "table.md").read_text().split("\n\n")[1]
    manifest = {"name": study, "description": description, "spec": str(spec), "axes": [],
                "runs": list(frame["run_id"]), "zip_groups": [list(g) for g in raw.get("zip", [])],
                "paper": raw.get("paper")}
    (study_dir / "study.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return study_dir


@pytest.mark.parametrize("study,spec,files", [
    ("quickstart", "ablations/quickstart.yaml", ("table.md", "table.csv")),
    ("mae_table1f_mask_sampling-small", "ablations/mae/table1f_mask_sampling.yaml",
     ("table.md", "table.csv", "comparison.md", "comparison.csv")),
])
def test_committed_report_regenerates_byte_for_byte(tmp_path, capsys, study, spec, files):
    study_dir = rebuild(study, REPO / spec, tmp_path)
    assert main(["report", str(study_dir), "--reports", str(tmp_path / "reports")]) == 0
    capsys.readouterr()
    for name in files:
        assert (tmp_path / "reports" / study / name).read_bytes() == (REPO / "reports" / study / name).read_bytes(), name

    committed = pd.read_csv(REPO / "reports" / study / "runs.csv", dtype=str, keep_default_na=False)
    rebuilt = pd.read_csv(tmp_path / "reports" / study / "runs.csv", dtype=str, keep_default_na=False)
    assert set(rebuilt["method"]) == {"mae"}  # a key added after these runs: with_added_later fills it in
    config_cols = [c for c in rebuilt.columns if c == "method" or ("." in c and " / " not in c)]
    assert config_cols == sorted(config_cols)  # `method` is a config column, in its place among them
    # a key added to the config after the report was committed is a new column, at the value every
    # earlier run had (with_added_later): the committed columns come back unchanged
    added = [c for c in rebuilt.columns if c not in committed.columns]
    for column in added:
        if column in ADDED_LATER:
            old = ADDED_LATER[column]
            assert set(rebuilt[column]) == {"" if old is None else str(old)}, column
    pd.testing.assert_frame_equal(rebuilt[list(committed.columns)], committed)
