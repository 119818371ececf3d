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
"""
from __future__ import annotations

import signal
from pathlib import Path

import torch

from bench.core.files import atomic_torch_save


class Checkpointer:
    """Save/load one run's checkpoint file; relay a preemption signal at a step boundary."""

    def __init__(self, path: Path | str, every_epochs: int = 0):
        self.path, self.every_epochs = Path(path), every_epochs
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
        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

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
