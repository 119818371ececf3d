"""Exact counts: every strategy masks exactly `num_masked(L, ratio)` patches per sample, so MAE's
gather of the visible tokens works for all of them. Strategies that cannot hit the count by
construction (block, grid, coarse) trim or top up at random with `exact_count`.

Randomness comes only from the torch.Generator passed in; NumPy code draws from `numpy_rng`,
a NumPy generator seeded by (and advancing) the torch one: the same seed gives the same masks.
"""
from __future__ import annotations

import numpy as np
import torch


def exact_count(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Trim or top up each row of `mask` at random to exactly `count` True entries.

    Masked positions score in [1, 2), unmasked ones in [0, 1) (float64 noise: no ties); the
    `count` highest scores keep every already-masked patch first, then fill with random
    unmasked ones (or, when a row has too many, keep a random subset of its masked ones).
    The k-th smallest score is the threshold: a selection, cheaper than a sort. On the CPU
    in NumPy (a third of the time of the same torch calls), elsewhere in torch.
    """
    if mask.device.type == "cpu":
        return torch.from_numpy(exact_count_numpy(mask.numpy(), count, numpy_rng(generator)))
    return exact_count_torch(mask, count, generator)


def exact_count_torch(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """exact_count in torch, on the mask's device."""
    rows = (mask.sum(dim=1) != count).nonzero().squeeze(1)
    if len(rows) == 0:
        return mask
    scores = mask[rows] + torch.rand(len(rows), mask.shape[1], generator=generator, device=mask.device,
                                     dtype=torch.float64)
    threshold = scores.kthvalue(mask.shape[1] - count, dim=1, keepdim=True).values
    mask = mask.clone()
    mask[rows] = scores > threshold
    return mask


def exact_count_numpy(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """exact_count on a NumPy B×L bool array (returns a new array when it changes any row)."""
    rows = np.flatnonzero(mask.sum(1) != count)
    if len(rows) == 0:
        return mask
    scores = mask[rows] + rng.random((len(rows), mask.shape[1]))
    k = mask.shape[1] - count  # the k-th smallest score is the last one left out
    threshold = np.partition(scores, k - 1, axis=1)[:, k - 1:k]
    mask = mask.copy()
    mask[rows] = scores > threshold
    return mask


def numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded from (and advancing) the torch one: same torch seed, same draws."""
    return np.random.Generator(np.random.PCG64(int(torch.randint(2**62, (1,), generator=generator))))
