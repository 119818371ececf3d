"""The result store: one folder per run, written atomically.

    results/<study>/<run_id>/
        config.yaml     the resolved config (what the run id hashes)
        metrics.jsonl   one strict-JSON line per epoch and phase (loss, lr, images/s, wall time);
                        a non-finite value is refused (the run fails naming the key)
        result.json     written last, atomically: its presence means the run is done
        error.txt       the phase and traceback of a failed attempt (removed when a later attempt succeeds)
        checkpoint.pt   while a run is unfinished (bench.train.checkpoint); a corrupt one is set aside
                        as checkpoint.pt.corrupt-<time> and the run starts again
        warnings.log    what was set aside or recovered, one timestamped line each (kept across attempts)
        lease.lock, lease.json   who is running it now (bench.launch.lease)
        job.json        the SLURM job (bench.launch.status); resumed.log: one line per resume
        tensorboard/    the metrics and, once done, the hyper-parameters as TensorBoard events
                        (bench.launch.tensorboard; a mirror of metrics.jsonl)

A run folder without a complete result.json is not done, whatever else it holds; a done run's
result.json is never deleted except by a forced rerun.

Test hook (for tests/test_kill.py, inert otherwise): MIMBENCH_TEST_DIE_AT=<point> kills the
process with SIGKILL when the run reaches <point>: `<phase>:<epoch>` right after that metrics
line is written (e.g. pretrain:2, linear_probe:1, finetune:1), `result:before`,
`result:during` (the temporary file written, not yet renamed) or `result:after`.
"""
from __future__ import annotations

import errno
import json
import math
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from bench.core.errors import ConfigError
from bench.core.files import atomic_write, atomic_write_text
from bench.launch.tensorboard import RunBoard
from bench.study.run_ids import with_added_later

RESULT_KEYS = ("run_id", "study", "finetune_top1", "linear_probe_top1", "pretrain_images_per_s",
               "pretrain_wall_s", "n_params", "torch_version", "timm_version", "git_commit", "device")
RUN_FILES = ("config.yaml", "metrics.jsonl", "result.json", "error.txt", "checkpoint.pt", "lease.json",
             "resumed.log", "warnings.log")  # what a run's own process writes (job.json is the launcher's)
WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class CannotWrite(ConfigError):
    """The results folder cannot be written (read-only, full, over quota): one line, exit status 2."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(str(path), f"cannot write ({reason}); earlier results are left as they were")


def write_failure(err: BaseException) -> OSError | None:
    """The OSError behind `err` (itself, its cause or context) when it says the disk refused a write."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        err = err.__cause__ or err.__context__
    return None


def die_at(point: str) -> None:
    """The test hook described above: SIGKILL this process at `point` when asked to."""
    if os.environ.get("MIMBENCH_TEST_DIE_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def strict_json(value: Any, what: str, **kwargs) -> str:
    """json.dumps that refuses NaN and ±Infinity, naming the key that holds one."""
    def find(v, key):
        if isinstance(v, float) and not math.isfinite(v):
            return key, v
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, (list, tuple)) else ()
        for k, sub in items:
            hit = find(sub, f"{key}.{k}" if key else str(k))
            if hit:
                return hit
        return None
    hit = find(value, "")
    if hit:
        raise ValueError(f"{what}: {hit[0]} is {hit[1]}, not a finite number (not written)")
    return json.dumps(value, allow_nan=False, **kwargs)


class RunFolder:
    """The files of one run."""

    def __init__(self, root: Path | str, study: str, run_id: str):
        self.study, self.run_id = study, run_id
        self.path = Path(root) / study / run_id
        self.board = RunBoard(self.path)

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    result_path = property(lambda self: self.path / "result.json")
    error_path = property(lambda self: self.path / "error.txt")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    warnings_path = property(lambda self: self.path / "warnings.log")

    def is_done(self) -> bool:
        return read_result(self.result_path) is not None

    def start(self, config: dict, force: bool = False) -> None:
        """Begin (or begin again) a run: write its config, clear earlier metrics and errors.

        A finished run is never restarted (its result.json never deleted) unless `force`."""
        if not force and self.is_done():
            raise RuntimeError(f"{self.path} is done; not restarting it without --force")
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=True))
        self.result_path.unlink(missing_ok=True)
        self.metrics_path.unlink(missing_ok=True)
        self.error_path.unlink(missing_ok=True)
        self.board.reset()

    def resume(self, config: dict, pretrain_epochs_done: int) -> None:
        """Begin again from a checkpoint: keep the metrics of the pre-training epochs it covers."""
        if self.is_done():
            raise RuntimeError(f"{self.path} is done; not resuming it")
        if self.read_config() != config:
            raise ValueError(f"{self.path}: config.yaml does not match the run's config; not resuming")
        kept = [row for row in self.read_metrics()
                if row.get("phase") == "pretrain" and row.get("epoch", 0) <= pretrain_epochs_done]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.board.reset()
        self._mirror(self.board.log, *kept)
        self.result_path.unlink(missing_ok=True)
        self.error_path.unlink(missing_ok=True)
        with open(self.path / "resumed.log", "a") as f:
            f.write(f"resumed after pre-training epoch {pretrain_epochs_done}\n")

    def log_metrics(self, row: dict) -> None:
        """Append one strict-JSON line; a NaN or infinite value raises ValueError naming its key."""
        line = strict_json(row, f"metrics of {row.get('phase', '?')} epoch {row.get('epoch', '?')}",
                           sort_keys=True) + "\n"
        with open(self.metrics_path, "a") as f:
            f.write(line)
            f.flush()
        self._mirror(self.board.log, row)
        die_at(f"{row.get('phase')}:{row.get('epoch')}")

    def _mirror(self, write, *items) -> None:
        """TensorBoard's copy: a failure to write it is a warning, never the run's end."""
        try:
            for item in items:
                write(item)
        except Exception as err:  # noqa: BLE001 - the record of the run is metrics.jsonl, not this
            self.warn(f"TensorBoard events not written: {type(err).__name__}: {err}")

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
        text = strict_json(result, f"result of {self.run_id}", indent=2, sort_keys=True) + "\n"
        die_at("result:before")

        def write(f):
            f.write(text)
            f.flush()
            die_at("result:during")
        atomic_write(self.result_path, write, binary=False)
        die_at("result:after")
        self.error_path.unlink(missing_ok=True)
        self._mirror(self.board.finish, result)

    def last_error_line(self, fallback: str = "") -> str:
        """The last non-blank line of error.txt (what `status`, the launcher and the progress show), or `fallback`."""
        try:
            lines = [line for line in self.error_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return fallback
        return lines[-1] if lines else fallback

    def write_error(self, text: str, phase: str | None = None) -> None:
        """error.txt: the phase the run was in, where and when, then the traceback (its last line
        is what `status` and the launcher show)."""
        if phase is not None:
            text = (f"phase: {phase}\nhost: {platform.node()} pid {os.getpid()} at "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}")
        atomic_write_text(self.error_path, text)

    def warn(self, message: str) -> None:
        """One timestamped line in warnings.log (and on stderr, i.e. the job's log)."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        print(f"mimbench: warning: {self.run_id}: {message}", file=sys.stderr)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.warnings_path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def clean_temp_files(self) -> list[str]:
        """Remove temporary files a killed writer left (core.files names them .<name>.<random>.tmp).

        Only the lease holder calls this, and only for the run's own files, so no live writer's
        temporary is touched."""
        removed = []
        if not self.path.is_dir():
            return removed
        for tmp in self.path.glob(".*.tmp"):
            if any(tmp.name.startswith(f".{name}.") for name in RUN_FILES):
                tmp.unlink(missing_ok=True)
                removed.append(tmp.name)
        return removed

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
