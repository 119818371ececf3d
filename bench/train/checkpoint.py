"""Checkpoints that resume exactly, and the preemption signal that asks for one.

A checkpoint holds everything the rest of a run depends on: the model and optimizer, the
epoch and step reached, the loss of the epoch so far, the random state of that epoch's
generator (augmentation and masks) and torch's global one (drop path), and how many metrics
lines had been written. The data order of an epoch is a function of (seed, epoch), so the
step index is enough to continue it. Resuming from a checkpoint ends with the same numbers as
a run that was never interrupted.

On SLURM, submitit sends SIGUSR2 before the time limit and on preemption. `Checkpointer`
takes that signal over while a run trains: the training loop sees the request at the next
step boundary, saves a consistent checkpoint, and hands the signal to submitit, which
requeues the job (see `bench.launch.launcher.RunJob.checkpoint`).

A checkpoint that cannot be read back (cut short, overwritten, from a torch that cannot read
it, or lacking what a resume needs) is never fatal: `load` renames it to
`checkpoint.pt.corrupt-<time>`, reports it through `warn` (the run folder's warnings.log) and
returns None, so the run starts again from scratch.
"""
from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Callable

import torch

from bench.core.files import atomic_torch_save


class Checkpointer:
    """Save/load one run's checkpoint file; relay a preemption signal at a step boundary."""

    # what a resume reads, by phase
    REQUIRED = {"pretrain": ("model", "optimizer", "epoch", "step", "generator", "torch_rng", "epoch_losses",
                             "images_seen", "wall_s"),
                "evals": ("epoch", "encoder", "stats", "n_params")}

    def __init__(self, path: Path | str, every_epochs: int = 0, warn: Callable[[str], None] | None = None):
        self.path, self.every_epochs = Path(path), every_epochs
        self.warn = warn or (lambda message: None)
        self.stop_requested = False
        self.defer = True  # True while training: act at the next step; False: hand over at once
        self._pending: tuple | None = None  # (previous handler, signum, frame)

    # -- files
    def save(self, state: dict) -> None:
        """Write atomically: a checkpoint cut short by a kill is never read. Only the main process writes."""
        from bench.train.distributed import current
        if not current().is_main:
            return
        atomic_torch_save(self.path, state)

    def load(self) -> dict | None:
        """The checkpoint, or None when there is none or it was corrupt (then set aside)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            problem = self.problem(state)
        except Exception as err:  # cut short, garbage, unpicklable: all the same to a resume
            problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        if problem is None:
            return state
        self.set_aside(problem)
        return None

    @classmethod
    def problem(cls, state) -> str | None:
        """Why `state` cannot be resumed from, or None."""
        if not isinstance(state, dict) or state.get("phase") not in cls.REQUIRED:
            return "not a checkpoint of this program"
        missing = [k for k in cls.REQUIRED[state["phase"]] if k not in state]
        return f"lacks {', '.join(missing)}" if missing else None

    def set_aside(self, problem: str) -> Path | None:
        """Rename the checkpoint to checkpoint.pt.corrupt-<time> (kept for a post-mortem) and warn."""
        from bench.train.distributed import current
        if not current().is_main:
            return None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}")
        try:
            self.path.rename(aside)
        except FileNotFoundError:
            return None
        self.warn(f"{self.path.name} could not be resumed from ({problem}); set aside as {aside.name}, "
                  "starting again from scratch")
        return aside

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def due(self, epochs_done: int) -> bool:
        return self.every_epochs > 0 and epochs_done % self.every_epochs == 0

    # -- the preemption signal
    def install(self, signum: int = signal.SIGUSR2) -> None:
        """From now on, `signum` only sets a flag that the training loop acts on."""
        previous = signal.getsignal(signum)

        def request(sig, frame):
            self.stop_requested = True
            self._pending = (previous, sig, frame)
            if not self.defer:  # nothing in flight worth saving (e.g. during the evals)
                self.hand_over()

        signal.signal(signum, request)

    def hand_over(self) -> None:
        """After saving: pass the signal on to the handler that was there before (submitit's)."""
        previous, sig, frame = self._pending
        if callable(previous):
            previous(sig, frame)
        raise Preempted(f"stopped by signal {sig}; checkpoint saved to {self.path}")


class Preempted(RuntimeError):
    """Raised once a checkpoint is saved on request, where no requeueing handler was installed."""
