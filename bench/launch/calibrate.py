"""How long a local launch will take here: a calibration step measured on this machine, and the
runs' compute expressed in it.

    calibrate(cfg, threads)        seconds of one pre-training step of `cfg` (its model, batch and
                                   mask ratio, on generated uint8 images of its size) with `threads`
                                   torch threads, after one warm-up step; and its FLOPs
    expected_steps(...)            the runs' compute (bench.study.budget.run_budget: pre-training and
                                   evals, 3 × forward for a train step) in calibration steps
    expected_seconds(...)          those steps spread over the runs that go at once

`mimbench run` prints both before a local launch ("calibration: one step 0.61 s; the 5 runs to do
are about 410 steps: ~4 min here"), so a time stated in the README as a multiple of the
calibration step holds on any machine. The estimate counts FLOPs, not the harness's own time
(process start, data loading, reports) nor the targets' cost; the README states how far the
quickstart's real time was from it. The calibration builds the model with the `pixel` target, as
the budget does, so no tokenizer is fitted.
"""
from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

import torch

from bench.study.budget import image_counts, run_budget


@dataclass
class Calibration:
    seconds: float        # one pre-training step
    flop: float           # its compute: 3 × forward × batch
    threads: int
    batch: int

    @property
    def flop_per_s(self) -> float:
        return self.flop / self.seconds


def calibrate(cfg: dict, threads: int, steps: int = 2) -> Calibration:
    """Time one pre-training step of the run config `cfg` on this machine's CPU (the fastest of
    `steps`, after one warm-up step) with `threads` torch threads."""
    from bench.data import dataset_entry
    from bench.data.datasets import ImageSet
    from bench.study.budget import flops_per_image
    from bench.train.pretrain import build_pretraining, epoch_generator

    cfg = copy.deepcopy(cfg)
    cfg["pretrain"]["target"], cfg["pretrain"]["target_params"] = "pixel", {}
    data, batch = cfg["data"], cfg["pretrain"]["batch_size"]
    channels = dataset_entry(data["name"]).channels
    size = data["img_size"]
    shape = (batch, channels, data["frames"], size, size) if data.get("frames") else (batch, channels, size, size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    train_set = ImageSet(data["name"], images, torch.zeros(batch, dtype=torch.long), 10)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _, _, step = build_pretraining(cfg, train_set, torch.device("cpu"))
        gen = epoch_generator(0, 0, torch.device("cpu"))
        lr = 1e-4
        step(images, lr, gen)  # warm-up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step(images, lr, gen)
            times.append(time.perf_counter() - start)
        step.split_step.close()
    finally:
        torch.set_num_threads(previous)
    flop = 3 * flops_per_image(cfg, cfg["masking"]["ratio"])["total"] * batch
    return Calibration(min(times), flop, threads, batch)


def expected_steps(configs: list[dict], data_root: str | None, calibration: Calibration) -> float | None:
    """The runs' compute (pre-training and evals) in calibration steps; None when a run's image
    counts are not known."""
    memo, total = {}, 0.0
    for cfg in configs:
        n_train, n_test = image_counts(cfg["data"], data_root, memo)
        if n_train is None or n_test is None:
            return None
        total += run_budget(cfg, n_train, n_test)["total"]
    return total / calibration.flop


def expected_seconds(steps: float, calibration: Calibration, runs: int, at_once: int,
                     cores: int | None = None) -> float:
    """`steps` calibration steps, `at_once` of the `runs` going at a time (each with the calibration's
    threads) on `cores` cores (default: this machine's): more runs at once than the cores hold share them."""
    cores = cores or os.cpu_count() or 1
    return steps * calibration.seconds / max(1, min(at_once, runs, cores // calibration.threads))
