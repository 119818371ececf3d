"""Launching a study's runs through submitit: debug (this process), local, or SLURM.

    debug   submitit's DebugExecutor: runs one after another in this process.
    local   submitit's LocalExecutor: `parallel` runs at a time, each in its own process,
            submitted in waves (the LocalExecutor itself has no queue). On a machine with GPUs
            (those the launcher sees: its CUDA_VISIBLE_DEVICES, else all), one run per GPU, as
            many at once as there are GPUs, each with only its GPU visible.
    slurm   submitit's AutoExecutor: all runs of the launch as one job array, at most
            `parallel` at a time, with partition, time, GPUs, CPUs and memory from the launch.

Runs whose folder already holds a complete result.json are skipped unless forced. A run whose
lease another live process holds (bench.launch.lease: a second `mimbench run` of the same
study, on any executor) is left to it and counted as "running elsewhere" — not failed, not
done; the check is made again just before each run is started, and `run_one` itself takes the
lease, so two launches started together never run one run twice. On SLURM, the "submitting"
records are written (under the study's .launch.lock) before `map_array` submits, so a
concurrent launch sees those runs as queued. A results folder that refuses writes (read-only,
full) stops the launch with one line (CannotWrite; exit status 2). While jobs run, progress
follows each run's metrics.jsonl (bench.launch.progress: rich bars in a terminal, plain lines
in a log).
"""
from __future__ import annotations

import fcntl
import gc
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import submitit
import torch
from rich.console import Console

from bench.core import cache
from bench.launch import lease as leases
from bench.launch.job import pretrain_config, run_one
from bench.launch.progress import RunProgress
from bench.launch.status import busy_runs, clear_submitting, slurm_states, write_job, write_submitting
from bench.launch.store import CannotWrite, RunFolder, write_failure, write_study_manifest
from bench.study.run_ids import run_id
from bench.study.spec import Run, Study
from bench.train import distributed


@dataclass
class LaunchOutcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run_id -> last line of the error
    skipped: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # when not waiting (slurm --no-wait)
    already_running: list[str] = field(default_factory=list)  # live SLURM jobs of an earlier launch
    running_elsewhere: dict[str, str] = field(default_factory=dict)  # run_id -> "HOST pid N": another process's lease
    cannot_write: tuple[str, str] | None = None  # (path, reason): the results folder refused a write


def runs_to_do(study: Study, results_root: str | Path, force: bool = False) -> tuple[list[Run], list[Run]]:
    """(to run, already done). A done run's leftover checkpoint (a kill between writing the result
    and removing it) is removed, under the run's lease."""
    todo, done = [], []
    for run in study.runs:
        folder = RunFolder(results_root, study.name, run.run_id)
        is_done = folder.is_done()
        (done if not force and is_done else todo).append(run)
        if is_done and not force and folder.checkpoint_path.exists():
            _tidy_done(folder)
    return todo, done


def _tidy_done(folder: RunFolder) -> None:
    lease = leases.Lease(folder.path, kind="tidy")
    try:
        if lease.acquire(wait_s=0) is None and folder.is_done():
            folder.checkpoint_path.unlink(missing_ok=True)
            folder.clean_temp_files()
    except OSError:
        pass  # a read-only folder: nothing to tidy
    finally:
        lease.release()


@contextmanager
def _launch_lock(study_dir: Path) -> Iterator[None]:
    """The study's .launch.lock, held while a launch decides what to submit and marks it."""
    study_dir.mkdir(parents=True, exist_ok=True)
    with open(study_dir / ".launch.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _local_threads(launch: dict, at_once: int) -> int:
    return launch["threads"] or max(1, (os.cpu_count() or 1) // at_once)


def local_gpus(launch: dict) -> list[int]:
    """The GPUs local runs share out, one run on each: the launcher's CUDA_VISIBLE_DEVICES (integer
    ids), else every GPU torch sees; none with `device: cpu` (or ids given as UUIDs: then every run
    sees what the launcher sees, as submitit leaves it)."""
    if launch.get("device") == "cpu":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [part.strip() for part in visible.split(",") if part.strip()]
        return [int(i) for i in ids] if all(i.isdigit() for i in ids) else []
    return list(range(torch.cuda.device_count()))


def launch_study(study: Study, results_root: str | Path = "results", force: bool = False, wait: bool = True,
                 console: Console | None = None, calibrate: bool = False) -> LaunchOutcome:
    """Run (or submit) the study's runs that are neither done (unless `force`) nor running elsewhere.
    `calibrate`: before a local launch on the CPUs, time one pre-training step here and print the
    expected time of the runs to do in such steps (bench.launch.calibrate).

    Raises CannotWrite (one line) when the results folder refuses writes."""
    console = console or Console(stderr=True)
    results_root = str(results_root)
    study_dir = Path(results_root) / study.name
    try:  # the first write: a read-only or full results folder stops here, before anything runs
        write_study_manifest(study_dir, study.name, study.description, study.path,
                             study.axes, [r.run_id for r in study.runs], study.zip_groups, study.paper)
    except OSError as err:
        reason = write_failure(err) or err
        raise CannotWrite(study_dir, reason.strerror or str(reason)) from None
    launch = dict(study.launch)
    launch["force"] = force
    if launch["executor"] == "slurm":
        return _launch_slurm(study, results_root, launch, force, wait, console)
    outcome, todo = _plan(study, results_root, force)
    if not todo:
        return outcome
    logs = study_dir / ".submitit"

    def startable(run: Run) -> bool:
        """Asked again just before a run starts: another launch may have taken or finished it."""
        folder = RunFolder(results_root, study.name, run.run_id)
        held = leases.holder(folder.path)
        if held is not None:
            outcome.running_elsewhere[run.run_id] = leases.describe(held)
            return False
        if not force and folder.is_done():
            outcome.skipped.append(run.run_id)
            return False
        return True

    if launch["executor"] == "debug":
        executor = submitit.DebugExecutor(folder=logs)
        with RunProgress(study, results_root, len(todo), console) as progress:
            for run in todo:
                if outcome.cannot_write or not startable(run):
                    progress.skipped()
                    continue
                progress.started(run)
                # run_one records a failure itself and returns it, so the DebugExecutor never
                # reaches its post-mortem debugger.
                job = executor.submit(run_one, run.config, study.name, results_root, launch, False)
                _record(outcome, run, job.result())
                progress.finished(run)
    else:  # local
        gpus = local_gpus(launch)  # one run per GPU; none: `parallel` runs on the CPUs
        at_once = len(gpus) or launch["parallel"]
        launch["threads"] = _local_threads(launch, at_once)
        if calibrate and not gpus:
            _print_expected(study, todo, launch, at_once, console)
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=launch["timeout_min"])
        pending, running, free = list(todo), {}, list(gpus)
        with RunProgress(study, results_root, len(todo), console) as progress:
            while pending or running:
                while pending and len(running) < at_once:  # submit in waves
                    run = pending.pop(0)
                    if outcome.cannot_write or not startable(run):
                        progress.skipped()
                        continue
                    gpu = free.pop(0) if gpus else None
                    if gpu is not None:  # this run's process sees this GPU alone (CUDA_VISIBLE_DEVICES)
                        executor.update_parameters(gpus_per_node=1, visible_gpus=(gpu,))
                    running[run.run_id] = (run, executor.submit(run_in_own_process, run.config, study.name,
                                                                results_root, launch, False), gpu)
                    progress.started(run)
                if not running:
                    break
                time.sleep(1.0)
                progress.refresh()
                for rid, (run, job, gpu) in list(running.items()):
                    if job.done():
                        _collect(outcome, run, job, results_root, study.name)
                        progress.finished(run)
                        del running[rid]
                        if gpu is not None:
                            free.append(gpu)
    if outcome.cannot_write:
        raise CannotWrite(*outcome.cannot_write)
    return outcome


def _print_expected(study: Study, todo: list[Run], launch: dict, at_once: int, console: Console) -> None:
    """One line: the calibration step measured here and the runs' expected time in such steps."""
    from bench.launch.calibrate import calibrate, expected_seconds, expected_steps

    first = next((r for r in todo if not r.config.get("baseline")),
                 next((r for r in study.runs if not r.config.get("baseline")), None))
    if first is None:
        return
    try:
        cal = calibrate(first.config, launch["threads"])
        steps = expected_steps([r.config for r in todo], launch.get("data_root"), cal)
    except Exception as err:  # an estimate is not worth stopping a launch for: say why there is none
        console.print(f"calibration skipped: {type(err).__name__}: {err}", soft_wrap=True)
        return
    line = (f"calibration: one pre-training step of run {first.run_id} (batch {cal.batch}, {cal.threads} "
            f"thread{'s' * (cal.threads > 1)}) takes {cal.seconds:.2f} s here")
    if steps is not None:
        minutes = expected_seconds(steps, cal, len(todo), at_once) / 60
        line += (f"; the {len(todo)} run{'s' * (len(todo) > 1)} to do {'are' if len(todo) > 1 else 'is'} about "
                 f"{steps:,.0f} such steps of compute, "
                 f"{at_once} at a time: ~{minutes:.1f} min of compute (process starts, data and reports on top)")
    console.print(line, soft_wrap=True)


def _plan(study: Study, results_root: str, force: bool) -> tuple[LaunchOutcome, list[Run]]:
    """What to run now: neither done (unless forced) nor queued or running anywhere."""
    todo, done = runs_to_do(study, results_root, force)
    outcome = LaunchOutcome(skipped=[r.run_id for r in done])
    busy = busy_runs(Path(results_root) / study.name, [r.run_id for r in todo])
    for rid, status in busy.items():
        if status.queued:  # pending or running on SLURM (or being submitted): leave it be
            outcome.already_running.append(rid)
        else:  # its lease is held by a live process of another launch
            outcome.running_elsewhere[rid] = leases.describe(status.holder or {})
    outcome.already_running.sort()
    todo = [r for r in todo if r.run_id not in busy]
    if force:  # no cached pre-training either (each run's checkpoint goes in run_one, under its lease);
        # runs that share a pre-training then share the one built anew
        for key in {run_id(pretrain_config(r.config)) for r in todo}:
            cache.entry_path(cache.cache_root(results_root), "encoders", key).unlink(missing_ok=True)
    return outcome, todo


def _launch_slurm(study: Study, results_root: str, launch: dict, force: bool, wait: bool,
                  console: Console) -> LaunchOutcome:
    """One job array of checkpointable runs."""
    study_dir = Path(results_root) / study.name
    executor = submitit.AutoExecutor(folder=study_dir / ".submitit", cluster="slurm",
                                     slurm_max_num_timeout=launch["max_requeues"])
    params = dict(timeout_min=launch["timeout_min"], slurm_array_parallelism=launch["parallel"],
                  gpus_per_node=launch["gpus_per_node"], tasks_per_node=launch["tasks_per_node"],
                  nodes=launch["nodes"], name=f"mimbench-{study.name}")
    optional = {"slurm_partition": launch["partition"], "cpus_per_task": launch["cpus_per_task"],
                "mem_gb": launch["mem_gb"], "slurm_constraint": launch["constraint"],
                "slurm_account": launch["account"], "slurm_qos": launch["qos"],
                "slurm_additional_parameters": launch["additional"] or None}
    params.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**params)
    if launch["cpus_per_task"] and not launch["threads"]:
        launch["threads"] = launch["cpus_per_task"]
    # deciding what to submit and marking it is one step: two launches cannot both pick a run
    with _launch_lock(study_dir):
        outcome, todo = _plan(study, results_root, force)
        if not todo:
            return outcome
        folders = [RunFolder(results_root, study.name, r.run_id) for r in todo]
        for folder in folders:  # an earlier attempt's failure no longer describes a run submitted again
            folder.error_path.unlink(missing_ok=True)
            write_submitting(folder)
        n = len(todo)
        try:
            jobs = executor.map_array(RunJob(), [r.config for r in todo], [study.name] * n, [results_root] * n,
                                      [launch] * n)
        except BaseException:
            for folder in folders:
                clear_submitting(folder)
            raise
        for folder, job in zip(folders, jobs):
            write_job(folder, job.job_id, "slurm")
    if not wait:
        outcome.submitted = [r.run_id for r in todo]
        return outcome
    running = {r.run_id: (r, j) for r, j in zip(todo, jobs)}
    gone_since: dict[str, float] = {}
    with RunProgress(study, results_root, n, console) as progress:
        for run in todo:
            progress.started(run)
        while running:
            time.sleep(2.0)
            progress.refresh()
            queued = slurm_states([job.job_id for _, job in running.values()])
            for rid, (run, job) in list(running.items()):
                if not job.done():
                    # without accounting, submitit cannot see a job that was cancelled or killed
                    # before writing its result: it has left the queue and will never be done
                    if job.job_id in queued:
                        gone_since.pop(rid, None)
                        continue
                    if time.monotonic() - gone_since.setdefault(rid, time.monotonic()) < 30:
                        continue
                    folder = RunFolder(results_root, study.name, rid)
                    if folder.is_done():
                        outcome.done.append(rid)
                    else:
                        outcome.failed[rid] = folder.last_error_line(
                            f"SLURM job {job.job_id} left the queue without a result (cancelled or killed)")
                else:
                    _collect(outcome, run, job, results_root, study.name)
                progress.finished(run)
                del running[rid]
    return outcome


def run_in_own_process(config: dict, study: str, results_root: str, launch: dict, raise_on_failure: bool) -> dict:
    """`run_one` in a process of its own that ends when it returns (a local job): its objects are
    frozen out of the garbage collector first, which spares the interpreter's last collections
    over everything torch, torchvision and timm made (1.5–3 s a run here, while a core waits)."""
    try:
        return run_one(config, study, results_root, launch, raise_on_failure)
    finally:
        gc.freeze()


class RunJob(submitit.helpers.Checkpointable):
    """One run as a SLURM job: SIGUSR2 (time limit, preemption) saves a checkpoint and requeues.

    `run_one` saves the checkpoint at the next training step and hands the signal to
    submitit, which calls `checkpoint` — the inherited one resubmits this same call — and
    requeues the job; the new attempt resumes from the checkpoint in the run folder.
    """

    def __call__(self, config: dict, study: str, results_root: str, launch: dict) -> dict:
        device = launch.get("device", "auto")
        distributed.init_from_submitit("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                                       else "cpu")
        try:
            return run_one(config, study, results_root, launch, raise_on_failure=True, catch_preemption=True)
        finally:
            distributed.shutdown()
            gc.freeze()  # the job's process ends now: see run_in_own_process

    def checkpoint(self, config: dict, study: str, results_root: str, launch: dict):
        """Requeue this same call, but never forced again: the new attempt resumes its checkpoint."""
        return submitit.helpers.DelayedSubmission(self, config, study, results_root, {**launch, "force": False})


def _record(outcome: LaunchOutcome, run: Run, returned: dict) -> None:
    status = returned.get("status")
    if status == "done":
        (outcome.skipped if returned.get("already_done") else outcome.done).append(run.run_id)
    elif status == "running_elsewhere":
        outcome.running_elsewhere[run.run_id] = leases.describe(returned.get("holder") or {})
    else:
        outcome.failed[run.run_id] = returned.get("error", "failed")
        if returned.get("cannot_write") and not outcome.cannot_write:
            outcome.cannot_write = tuple(returned["cannot_write"])


def _collect(outcome: LaunchOutcome, run: Run, job, results_root: str, study: str) -> None:
    try:
        if isinstance(job, submitit.LocalJob) and job.state == "INTERRUPTED" and not job.paths.result_pickle.exists():
            # killed by a signal: no result will come (submitit would wait 15 s for one)
            raise RuntimeError(f"local job {job.job_id} was killed by a signal")
        _record(outcome, run, job.results()[0])  # task 0 (the main process) holds the run's outcome
    except Exception as err:  # the job raised, was killed, or timed out
        folder = RunFolder(results_root, study, run.run_id)
        fallback = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        _note_death(folder, fallback)
        outcome.failed[run.run_id] = folder.last_error_line(fallback)


def _note_death(folder: RunFolder, what: str) -> None:
    """A job process that died without a word (killed, out of memory) leaves error.txt all the same:
    the phase it was in (from its stale lease.json), written under the run's lease."""
    if folder.error_path.exists() or folder.is_done():
        return
    lease = leases.Lease(folder.path, kind="launcher")
    try:
        stale = leases.read_lease(folder.path) or {}
        if lease.acquire(wait_s=0) is None and not folder.is_done():
            folder.write_error(f"the job's process ({stale.get('host', '?')} pid {stale.get('pid', '?')}) ended "
                               f"without a result: {what}\n", phase=stale.get("phase", "unknown"))
    except OSError:
        pass
    finally:
        lease.release()
