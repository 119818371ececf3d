"""Where every run of a study stands: from its result folder and, for SLURM jobs, the queue.

    done         result.json is complete
    failed       error.txt holds the traceback (the last line is shown)
    running      its SLURM job is running
    pending      its SLURM job waits in the queue (requeued jobs wait here too)
    interrupted  it started but neither finished nor has a live job (relaunch resumes it)
    to do        nothing yet

A run launched on SLURM records its job id in `job.json`; a requeued run appends a line to
`resumed.log` each time it continues from its checkpoint.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.core.files import atomic_write_text
from bench.launch.store import RunFolder, iter_runs

JOB_FILE = "job.json"
LIVE_STATES = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
               "REQUEUE_FED": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
               "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running"}


def write_job(folder: RunFolder, job_id: str, executor: str) -> None:
    atomic_write_text(folder.path / JOB_FILE, json.dumps({"job_id": job_id, "executor": executor,
                                                          "submitted": time.time()}) + "\n")


def read_job(folder: RunFolder) -> dict | None:
    try:
        return json.loads((folder.path / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """job id -> SLURM state for the jobs the queue still knows (empty without SLURM)."""
    if not job_ids or shutil.which("squeue") is None:
        return {}
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=30)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


@dataclass
class RunStatus:
    run_id: str
    state: str
    job_id: str | None = None
    resumed: int = 0
    detail: str = ""


def study_status(study_dir: Path | str, run_ids: list[str] | None = None) -> list[RunStatus]:
    """The state of each run folder of a study (and of `run_ids` not started yet)."""
    study_dir = Path(study_dir)
    folders = {f.run_id: f for f in iter_runs(study_dir)}
    for rid in run_ids or []:
        folders.setdefault(rid, RunFolder(study_dir.parent, study_dir.name, rid))
    jobs = {rid: read_job(f) for rid, f in folders.items()}
    live = slurm_states([j["job_id"] for j in jobs.values() if j and j.get("executor") == "slurm"])
    statuses = []
    for rid, folder in folders.items():
        job = jobs[rid] or {}
        resumed_log = folder.path / "resumed.log"
        resumed = len(resumed_log.read_text().splitlines()) if resumed_log.exists() else 0
        status = RunStatus(rid, "to do", job.get("job_id"), resumed)
        if folder.is_done():
            status.state = "done"
        elif folder.error_path.exists():  # (a launch clears it when it submits the run again)
            lines = [ln for ln in folder.error_path.read_text().splitlines() if ln.strip()]
            status.state, status.detail = "failed", (lines[-1] if lines else "")
        elif job.get("job_id") in live:
            status.state = LIVE_STATES.get(live[job["job_id"]], live[job["job_id"]].lower())
        elif folder.metrics_path.exists() or folder.checkpoint_path.exists():
            status.state = "interrupted"
        statuses.append(status)
    order = {rid: i for i, rid in enumerate(run_ids or [])}
    return sorted(statuses, key=lambda s: (order.get(s.run_id, len(order)), s.run_id))


def live_run_ids(study_dir: Path | str, run_ids: list[str]) -> set[str]:
    """Runs whose SLURM job is still pending or running: a relaunch leaves them alone."""
    return {s.run_id for s in study_status(study_dir, run_ids) if s.state in ("pending", "running")}


def cancel_study(study_dir: Path | str) -> list[str]:
    """scancel every live job of the study; returns the job ids cancelled."""
    ids = [s.job_id for s in study_status(study_dir) if s.state in ("pending", "running") and s.job_id]
    if ids:
        subprocess.run(["scancel", *ids], check=True, capture_output=True, timeout=30)
    return ids
