"""A launch's progress, shown wherever its output goes.

In a terminal: rich live bars, one for the study and one per running run (epochs done / planned,
from its metrics.jsonl). Anywhere else (a pipe, nohup, SLURM's log file, CI): plain lines, so
`tail -f` of the log shows the launch as it goes —

    12:04:31 quickstart: started strategy=block seed=0 (4f1c2a0e9b7d)
    12:05:02 quickstart: 4f1c2a0e9b7d pretrain epoch 1/4 loss 0.6123
    12:09:40 quickstart: 4f1c2a0e9b7d finished: fine-tune 74.6, linear probe 71.7
    12:09:41 quickstart: 0c2d9e1a7b33 failed: ValueError: ...

at most one epoch line per run every `every_s` seconds (the latest epoch then), and always its
start and its end.
"""
from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.launch.store import RunFolder, read_result
from bench.study.spec import Run, Study

EVAL_LABELS = {"finetune_top1": "fine-tune", "linear_probe_top1": "linear probe", "knn_top1": "k-NN"}


def phase_epochs(config: dict, phase: str) -> int | None:
    """Epochs planned for one phase of a run (pretrain, or an eval's name)."""
    if phase == "pretrain":
        return config["pretrain"]["epochs"]
    return config["evals"].get(phase, {}).get("epochs")


def planned_epochs(config: dict) -> int:
    """Epochs of every phase the run will log: pre-training (none for a baseline) and its enabled evals."""
    evals = config["evals"]
    pretraining = 0 if config.get("baseline") else config["pretrain"]["epochs"]  # a baseline does not pre-train
    return pretraining + sum(evals[e]["epochs"] for e in evals if evals[e]["enabled"] and "epochs" in evals[e])


def run_label(run: Run) -> str:
    return " ".join(f"{k.split('.')[-1]}={v}" for k, v in run.varying.items()) or run.run_id


def epoch_line(row: dict, config: dict) -> str:
    """'pretrain epoch 3/8 loss 0.3481' from one metrics.jsonl row."""
    phase = row.get("phase", "?")
    total = phase_epochs(config, phase)
    text = f"{phase} epoch {row.get('epoch', '?')}" + (f"/{total}" if total else "")
    for key in ("loss", "top1"):
        if isinstance(row.get(key), (int, float)):
            text += f" {key} {row[key]:.4f}" if key == "loss" else f" {key} {row[key]:.1f}"
    return text


def end_line(folder: RunFolder) -> str:
    """'finished: fine-tune 74.6, linear probe 71.7', or 'failed: <error.txt's last line>'."""
    result = read_result(folder.result_path)
    if result is not None:
        scores = [f"{label} {result[k]:.1f}" for k, label in EVAL_LABELS.items()
                  if isinstance(result.get(k), (int, float))]
        return "finished" + (": " + ", ".join(scores) if scores else "")
    return "failed: " + folder.last_error_line("ended without a result")


class RunProgress:
    """Rich bars on a terminal, plain timestamped lines elsewhere; the launcher calls started,
    refresh (every second or two), finished, and skipped for a run it does not start."""

    def __init__(self, study: Study, results_root, total: int, console: Console, every_s: float = 5.0):
        self.study, self.root, self.console, self.every_s = study, results_root, console, every_s
        self.plain = not console.is_terminal
        self.runs: dict[str, Run] = {}
        self.rows_seen: dict[str, int] = {}
        self.last_line: dict[str, float] = {}
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False, disable=self.plain)
        self.overall = self.progress.add_task(f"[bold]{study.name}[/] runs", total=total)
        self.per_run: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {self.study.name}: {text}", markup=False,
                           highlight=False, soft_wrap=True)

    def started(self, run: Run) -> None:
        self.runs[run.run_id] = run
        self.rows_seen[run.run_id] = len(self._folder(run.run_id).read_metrics())  # a resumed run's kept rows
        self.last_line[run.run_id] = time.monotonic()
        if self.plain:
            self.say(f"started {run_label(run)} ({run.run_id})")
        else:
            self.per_run[run.run_id] = self.progress.add_task(f"  {run_label(run)} ({run.run_id[:6]}) epochs",
                                                              total=planned_epochs(run.config))

    def refresh(self, only: str | None = None) -> None:
        for rid, run in self.runs.items():
            if only is not None and rid != only:
                continue
            rows = self._folder(rid).read_metrics()
            if not self.plain:
                task = self.per_run[rid]
                self.progress.update(task, completed=min(len(rows), self.progress.tasks[task].total or 0))
                continue
            due = only is not None or time.monotonic() - self.last_line[rid] >= self.every_s
            if len(rows) > self.rows_seen[rid] and due:
                self.rows_seen[rid], self.last_line[rid] = len(rows), time.monotonic()
                self.say(f"{rid} {epoch_line(rows[-1], run.config)}")

    def finished(self, run: Run) -> None:
        self.refresh(only=run.run_id)  # its last epoch, whenever the previous line was
        self.runs.pop(run.run_id, None)
        if self.plain:
            self.say(f"{run.run_id} {end_line(self._folder(run.run_id))}")
        self.progress.advance(self.overall)

    def skipped(self) -> None:
        self.progress.advance(self.overall)

    def _folder(self, rid: str) -> RunFolder:
        return RunFolder(self.root, self.study.name, rid)
