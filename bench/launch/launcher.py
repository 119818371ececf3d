"""Launching a study's runs through submitit: debug (this process), local, or SLURM.

    debug   submitit's DebugExecutor: runs one after another in this process.
    local   submitit's LocalExecutor: `parallel` runs at a time, each in its own process,
            submitted in waves (the LocalExecutor itself has no queue).
    slurm   submitit's AutoExecutor: all runs of the launch as one job array, at most
            `parallel` at a time, with partition, time, GPUs, CPUs and memory from the launch.

Runs whose folder already holds a complete result.json are skipped unless forced. While jobs
run, a progress bar per run follows its metrics.jsonl (epochs done / epochs planned).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.launch.job import pretrain_config, run_one
from bench.study.spec import Run, Study
from bench.core import cache
from bench.train import distributed
from bench.launch.status import live_run_ids, slurm_states, write_job
from bench.launch.store import RunFolder, write_study_manifest
from bench.study.config import run_id


@dataclass
class LaunchOutcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run_id -> last line of the error
    skipped: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)  # when not waiting (slurm --no-wait)
    already_running: list[str] = field(default_factory=list)  # live SLURM jobs of an earlier launch


def planned_epochs(config: dict) -> int:
    evals = config["evals"]
    return (config["pretrain"]["epochs"] + sum(evals[e]["epochs"] for e in evals if evals[e]["enabled"]))


def runs_to_do(study: Study, results_root: str | Path, force: bool = False) -> tuple[list[Run], list[Run]]:
    """(to run, already done)."""
    todo, done = [], []
    for run in study.runs:
        (done if not force and RunFolder(results_root, study.name, run.run_id).is_done() else todo).append(run)
    return todo, done


def _last_error_line(folder: RunFolder, fallback: str) -> str:
    try:
        lines = [line for line in folder.error_path.read_text().splitlines() if line.strip()]
        return lines[-1] if lines else fallback
    except OSError:
        return fallback


class _RunProgress:
    """Rich progress: one bar for the study, one per running run (epochs from metrics.jsonl)."""

    def __init__(self, study: Study, results_root, total: int, console: Console):
        self.study, self.root = study, results_root
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.overall = self.progress.add_task(f"[bold]{study.name}[/] runs", total=total)
        self.per_run: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def started(self, run: Run):
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in run.varying.items()) or run.run_id
        self.per_run[run.run_id] = self.progress.add_task(f"  {label} ({run.run_id[:6]}) epochs",
                                                          total=planned_epochs(run.config))

    def refresh(self):
        for rid, task in self.per_run.items():
            rows = len(RunFolder(self.root, self.study.name, rid).read_metrics())
            self.progress.update(task, completed=rows)

    def finished(self, run: Run):
        self.refresh()
        self.progress.advance(self.overall)


def _local_threads(launch: dict) -> int:
    return launch["threads"] or max(1, (os.cpu_count() or 1) // launch["parallel"])


def launch_study(study: Study, results_root: str | Path = "results", force: bool = False, wait: bool = True,
                 console: Console | None = None) -> LaunchOutcome:
    console = console or Console(stderr=True)
    results_root = str(results_root)
    write_study_manifest(Path(results_root) / study.name, study.name, study.description, study.path,
                         study.axes, [r.run_id for r in study.runs], study.zip_groups, study.paper)
    todo, done = runs_to_do(study, results_root, force)
    outcome = LaunchOutcome(skipped=[r.run_id for r in done])
    live = live_run_ids(Path(results_root) / study.name, [r.run_id for r in todo])
    if live:  # pending or running on SLURM from an earlier launch: leave them be
        outcome.already_running = sorted(live)
        todo = [r for r in todo if r.run_id not in live]
    if force:  # start over: no resuming from an earlier attempt's checkpoint, no cached pre-training
        for run in todo:
            RunFolder(results_root, study.name, run.run_id).checkpoint_path.unlink(missing_ok=True)
            cache.entry_path(cache.cache_root(results_root), "encoders",
                             run_id(pretrain_config(run.config))).unlink(missing_ok=True)
    if not todo:
        return outcome
    launch = dict(study.launch)
    logs = Path(results_root) / study.name / ".submitit"
    executor_name = launch["executor"]

    if executor_name == "debug":
        executor = submitit.DebugExecutor(folder=logs)
        with _RunProgress(study, results_root, len(todo), console) as progress:
            for run in todo:
                progress.started(run)
                # run_one records a failure itself and returns it, so the DebugExecutor never
                # reaches its post-mortem debugger.
                job = executor.submit(run_one, run.config, study.name, results_root, launch, False)
                _record(outcome, run, job.result())
                progress.finished(run)
        return outcome

    if executor_name == "local":
        launch["threads"] = _local_threads(launch)
        executor = submitit.LocalExecutor(folder=logs)
        executor.update_parameters(timeout_min=launch["timeout_min"])
        pending, running = list(todo), {}
        with _RunProgress(study, results_root, len(todo), console) as progress:
            while pending or running:
                while pending and len(running) < launch["parallel"]:  # submit in waves
                    run = pending.pop(0)
                    running[run.run_id] = (run, executor.submit(run_one, run.config, study.name, results_root, launch))
                    progress.started(run)
                time.sleep(1.0)
                progress.refresh()
                for rid, (run, job) in list(running.items()):
                    if job.done():
                        _collect(outcome, run, job, results_root, study.name)
                        progress.finished(run)
                        del running[rid]
        return outcome

    # slurm: one job array of checkpointable runs
    executor = submitit.AutoExecutor(folder=logs, cluster="slurm", slurm_max_num_timeout=launch["max_requeues"])
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
    n = len(todo)
    for run in todo:  # an earlier attempt's failure no longer describes a run submitted again
        RunFolder(results_root, study.name, run.run_id).error_path.unlink(missing_ok=True)
    jobs = executor.map_array(RunJob(), [r.config for r in todo], [study.name] * n, [results_root] * n, [launch] * n)
    for run, job in zip(todo, jobs):
        write_job(RunFolder(results_root, study.name, run.run_id), job.job_id, "slurm")
    if not wait:
        outcome.submitted = [r.run_id for r in todo]
        return outcome
    running = {r.run_id: (r, j) for r, j in zip(todo, jobs)}
    gone_since: dict[str, float] = {}
    with _RunProgress(study, results_root, n, console) as progress:
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
                        outcome.failed[rid] = _last_error_line(
                            folder, f"SLURM job {job.job_id} left the queue without a result (cancelled or killed)")
                else:
                    _collect(outcome, run, job, results_root, study.name)
                progress.finished(run)
                del running[rid]
    return outcome


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


def _record(outcome: LaunchOutcome, run: Run, returned: dict) -> None:
    if returned.get("status") == "done":
        outcome.done.append(run.run_id)
    else:
        outcome.failed[run.run_id] = returned.get("error", "failed")


def _collect(outcome: LaunchOutcome, run: Run, job, results_root: str, study: str) -> None:
    try:
        _record(outcome, run, job.results()[0])  # task 0 (the main process) holds the run's outcome
    except Exception as err:  # the job raised, was killed, or timed out
        folder = RunFolder(results_root, study, run.run_id)
        outcome.failed[run.run_id] = _last_error_line(folder, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
