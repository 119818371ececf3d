"""The result store: one folder per run, written atomically.

    results/<study>/<run_id>/
        config.yaml     the resolved config (what the run id hashes)
        metrics.jsonl   one JSON line per epoch and phase (loss, lr, images/s, wall time)
        result.json     written last, atomically: its presence means the run is done
        error.txt       the traceback of a failed attempt (removed when a later attempt succeeds)

A run folder without a complete result.json is not done, whatever else it holds.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import yaml

from bench.core.files import atomic_write_text
from bench.study.config import with_added_later

RESULT_KEYS = ("run_id", "study", "finetune_top1", "linear_probe_top1", "pretrain_images_per_s",
               "pretrain_wall_s", "n_params", "torch_version", "timm_version", "git_commit", "device")


class RunFolder:
    """The files of one run."""

    def __init__(self, root: Path | str, study: str, run_id: str):
        self.study, self.run_id = study, run_id
        self.path = Path(root) / study / run_id

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    result_path = property(lambda self: self.path / "result.json")
    error_path = property(lambda self: self.path / "error.txt")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")

    def is_done(self) -> bool:
        return read_result(self.result_path) is not None

    def start(self, config: dict) -> None:
        """Begin (or begin again) a run: write its config, clear earlier metrics and errors."""
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=True))
        self.result_path.unlink(missing_ok=True)
        self.metrics_path.unlink(missing_ok=True)
        self.error_path.unlink(missing_ok=True)

    def resume(self, config: dict, pretrain_epochs_done: int) -> None:
        """Begin again from a checkpoint: keep the metrics of the pre-training epochs it covers."""
        if self.read_config() != config:
            raise ValueError(f"{self.path}: config.yaml does not match the run's config; not resuming")
        kept = [row for row in self.read_metrics()
                if row.get("phase") == "pretrain" and row.get("epoch", 0) <= pretrain_epochs_done]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.result_path.unlink(missing_ok=True)
        self.error_path.unlink(missing_ok=True)
        with open(self.path / "resumed.log", "a") as f:
            f.write(f"resumed after pre-training epoch {pretrain_epochs_done}\n")

    def log_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                break
        return rows

    def write_result(self, result: dict) -> None:
        missing = [k for k in RESULT_KEYS if k not in result]
        if missing:
            raise ValueError(f"result for {self.run_id} lacks {missing}")
        atomic_write_text(self.result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")
        self.error_path.unlink(missing_ok=True)

    def write_error(self, text: str) -> None:
        atomic_write_text(self.error_path, text)

    def read_config(self) -> dict | None:
        """The stored config; keys added to the schema since it was written read as their old value."""
        try:
            config = yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return with_added_later(config) if isinstance(config, dict) else config


def read_result(path: Path) -> dict | None:
    """The parsed result.json, or None when it is missing, cut short or incomplete."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(result, dict) or any(k not in result for k in RESULT_KEYS):
        return None
    return result


STUDY_FILE = "study.json"


def write_study_manifest(study_dir: Path | str, name: str, description: str, spec: str, axes: list[str],
                         run_ids: list[str], zip_groups: list[list[str]] | None = None,
                         paper: dict | None = None) -> None:
    """results/<study>/study.json: the spec's name, description, axes, zip groups, run order and the
    paper subtable it reproduces (if any), for reports."""
    manifest = {"name": name, "description": description, "spec": spec, "axes": axes, "runs": run_ids,
                "zip_groups": zip_groups or [], "paper": paper}
    atomic_write_text(Path(study_dir) / STUDY_FILE, json.dumps(manifest, indent=2) + "\n")


def read_study_manifest(study_dir: Path | str) -> dict:
    try:
        return json.loads((Path(study_dir) / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def iter_runs(study_dir: Path | str) -> Iterator[RunFolder]:
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        return
    for sub in sorted(study_dir.iterdir()):
        if sub.is_dir() and not sub.name.startswith("."):
            yield RunFolder(study_dir.parent, study_dir.name, sub.name)


def load_done_runs(study_dir: Path | str) -> list[dict[str, Any]]:
    """Every finished run of a study as {'run_id', 'config', 'result'}; unfinished ones are skipped."""
    runs = []
    for run in iter_runs(study_dir):
        result = read_result(run.result_path)
        config = run.read_config() if result is not None else None
        if result is not None and config is not None:
            runs.append({"run_id": run.run_id, "config": config, "result": result})
    return runs
