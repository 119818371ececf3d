"""Where every run of a study stands: from its result folder and, for SLURM jobs, the queue.

    done         result.json is complete
    running      a live process holds its lease (any executor, any host: detail says which
                 host and pid, and how old its heartbeat is), or its SLURM job is running
    failed       error.txt holds the phase and traceback (the last line is shown)
    pending      its SLURM job waits in the queue (requeued jobs wait here too), or a launch
                 is submitting it right now
    interrupted  it started but neither finished nor has a live process or job (relaunch resumes it)
    to do        nothing yet

A run launched on SLURM records its job id in `job.json`; before `map_array` submits, the
launch writes a "submitting" record there (its host and pid), so a concurrent launch sees the
run as queued; the job ids replace it once submitted, and a failed submission removes it. A
requeued run appends a line to `resumed.log` each time it continues from its checkpoint.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.core.files import atomic_write_text
from bench.launch.lease import describe, holder
from bench.launch.store import RunFolder, iter_runs

JOB_FILE = "job.json"
LIVE_STATES = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
               "REQUEUE_FED": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
               "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running"}


SUBMITTING_STALE_S = 600  # a "submitting" record of another host older than this is ignored


def write_job(folder: RunFolder, job_id: str, executor: str) -> None:
    atomic_write_text(folder.path / JOB_FILE, json.dumps({"job_id": job_id, "executor": executor,
                                                          "submitted": time.time()}) + "\n")


def write_submitting(folder: RunFolder, executor: str = "slurm") -> None:
    """The record a launch leaves before it submits the run: a concurrent launch sees it queued."""
    atomic_write_text(folder.path / JOB_FILE, json.dumps({
        "job_id": None, "executor": executor, "state": "submitting", "host": platform.node(), "pid": os.getpid(),
        "submitted": time.time()}) + "\n")


def clear_submitting(folder: RunFolder) -> None:
    """Remove this process's "submitting" record (a submission that failed)."""
    job = read_job(folder)
    if job and job.get("state") == "submitting" and job.get("pid") == os.getpid() \
            and job.get("host") == platform.node():
        (folder.path / JOB_FILE).unlink(missing_ok=True)


def _submitting(job: dict) -> bool:
    """A "submitting" record whose launch may still be at it."""
    if job.get("state") != "submitting":
        return False
    if job.get("host") == platform.node():
        try:
            os.kill(int(job.get("pid", 0)), 0)
            return True
        except (OSError, ValueError):
            return False
    return time.time() - float(job.get("submitted", 0)) < SUBMITTING_STALE_S


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
    holder: dict | None = None  # the lease's holder (host, pid, heartbeat_age, phase, ...) while running
    queued: bool = False  # pending or running as a SLURM job (or being submitted by a launch)


def study_status(study_dir: Path | str, run_ids: list[str] | None = None) -> list[RunStatus]:
    """The state of each run folder of a study (and of `run_ids` not started yet)."""
    study_dir = Path(study_dir)
    folders = {f.run_id: f for f in iter_runs(study_dir)}
    for rid in run_ids or []:
        folders.setdefault(rid, RunFolder(study_dir.parent, study_dir.name, rid))
    jobs = {rid: read_job(f) for rid, f in folders.items()}
    live = slurm_states([j["job_id"] for j in jobs.values() if j and j.get("executor") == "slurm" and j.get("job_id")])
    statuses = []
    for rid, folder in folders.items():
        job = jobs[rid] or {}
        resumed_log = folder.path / "resumed.log"
        resumed = len(resumed_log.read_text().splitlines()) if resumed_log.exists() else 0
        status = RunStatus(rid, "to do", job.get("job_id"), resumed)
        held = holder(folder.path) if folder.path.is_dir() else None
        if folder.is_done():
            status.state = "done"
        elif held is not None:  # a live process is running it, wherever it was launched
            status.state, status.holder = "running", held
            status.detail = f"on {describe(held)}" + (f", {held['phase']}" if held.get("phase") else "")
            status.queued = job.get("job_id") in live
        elif folder.error_path.exists():  # (a launch clears it when it submits the run again)
            status.state, status.detail = "failed", folder.last_error_line()
        elif job.get("job_id") in live:
            status.state = LIVE_STATES.get(live[job["job_id"]], live[job["job_id"]].lower())
            status.queued = True
        elif _submitting(job):
            status.state, status.queued = "pending", True
            status.detail = f"being submitted by {job.get('host')} pid {job.get('pid')}"
        elif folder.metrics_path.exists() or folder.checkpoint_path.exists():
            status.state = "interrupted"
        statuses.append(status)
    order = {rid: i for i, rid in enumerate(run_ids or [])}
    return sorted(statuses, key=lambda s: (order.get(s.run_id, len(order)), s.run_id))


def busy_runs(study_dir: Path | str, run_ids: list[str]) -> dict[str, RunStatus]:
    """Runs that are not done but pending or running (a held lease, a live SLURM job, a submission
    in progress): a relaunch leaves them alone. Only `run_ids`: a folder of a run the spec no longer
    has (an edited grid) is not this launch's concern."""
    wanted = set(run_ids)
    return {s.run_id: s for s in study_status(study_dir, run_ids)
            if s.run_id in wanted and s.state in ("pending", "running")}


def live_run_ids(study_dir: Path | str, run_ids: list[str]) -> set[str]:
    return set(busy_runs(study_dir, run_ids))


def cancel_study(study_dir: Path | str) -> list[str]:
    """scancel every live job of the study; returns the job ids cancelled."""
    ids = [s.job_id for s in study_status(study_dir) if s.state in ("pending", "running") and s.job_id]
    if ids:
        subprocess.run(["scancel", *ids], check=True, capture_output=True, timeout=30)
    return ids
