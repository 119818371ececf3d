"""Timing step kinds against each other: `Kind` (one step of a batch), `measure` (warm-up, then
rounds in alternating order) and `Cycle` (endless batches, a new epoch when one runs out).

Every kind gets warm-up steps, then the kinds run in turns ("rounds", the order alternating) so a
noisy machine slows all of them alike; a kind's images/s is the median over its windows
(bench.benchmarks.speed reports them).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

MIN_WINDOW_S = 0.3  # a cheap kind runs enough steps per window to last this long


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Kind:
    """A step kind: `step()` runs one step of `batch` images."""

    def __init__(self, name: str, step: Callable[[], None], batch: int, device: torch.device):
        self.name, self.step, self.batch, self.device = name, step, batch, device
        self.steps_per_window = 1
        self.rates: list[float] = []
        self.info: dict = {}
        self.close: Callable[[], None] = lambda: None  # frees what the step holds (threads)

    def run(self, n: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        sync(self.device)
        return time.perf_counter() - start


def measure(kinds: list[Kind], steps: int, warmup: int, windows: int, min_window_s: float = MIN_WINDOW_S) -> None:
    """Warm up every kind, then `windows` rounds in which every kind runs one timed window.

    A window is steps // windows steps, more for a cheap kind so that it lasts min_window_s; the
    order of the kinds alternates from round to round.
    """
    per_window = max(1, steps // windows)
    for kind in kinds:
        kind.run(max(warmup - 1, 0))
        one = kind.run(1)  # the last warm-up step sizes the window
        kind.steps_per_window = max(per_window, math.ceil(min_window_s / max(one, 1e-6)))
    threads = torch.get_num_threads()
    for r in range(windows):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            seconds = kind.run(kind.steps_per_window)
            kind.rates.append(kind.batch * kind.steps_per_window / seconds)
        if torch.get_num_threads() != threads:
            raise RuntimeError(f"torch threads changed from {threads} to {torch.get_num_threads()}")


class Cycle:
    """Endless batches: a new epoch (a new iterator) whenever one runs out."""

    def __init__(self, make: Callable[[int], object]):
        self.make, self.epoch, self.it = make, 0, iter(make(0))

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.make(self.epoch))
            return next(self.it)
