"""Exact counts: every strategy masks exactly `num_masked(L, ratio)` patches per sample, so MAE's
gather of the visible tokens works for all of them. Strategies that cannot hit the count by
construction (block, grid, coarse) trim or top up at random with `exact_count`; block tops up
with `grow_to_count` instead (by default), which adds the missing patches next to masked ones,
so its masks stay made of blocks.

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


def grow_to_count_numpy(mask: np.ndarray, grid_hw, count: int, uniforms) -> np.ndarray:
    """Top up each row of a B×L bool mask to `count` by growing what is masked (rows at or above
    `count` are left as they are). uniforms(n) -> n×L float32 in [0, 1).

    Each pass, per row still short: the frontier is its unmasked patches with a masked
    4-neighbour; min(missing, frontier size) of them are masked, those with the highest uniforms.
    A row with no frontier (nothing masked) gets one patch, the unmasked one with the highest
    uniform, and grows from it in the next pass. Growing never adds a region, so the mask keeps
    the regions (and single-patch regions) it had. Usually one pass: a block's frontier is wide.
    """
    height, width = grid_hw
    mask = mask.copy()
    rows = np.flatnonzero(mask.sum(1) < count)
    ranks = np.arange(mask.shape[1])
    while len(rows):
        short = mask[rows]
        need = count - short.sum(1)
        frontier = _frontier_numpy(short.reshape(-1, height, width)).reshape(len(rows), -1)
        size = frontier.sum(1)
        pool = np.where(size[:, None] > 0, frontier, ~short)
        take = np.where(size > 0, np.minimum(need, size), 1)
        scores = np.where(pool, uniforms(len(rows)), np.float32(-1))  # outside the pool: last
        order = np.argsort(-scores, axis=1, kind="stable")  # highest first, ties by position
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, ranks[None], axis=1)
        mask[rows] = short | (rank < take[:, None])
        rows = rows[need > take]
    return mask


def grow_to_count_torch(mask: torch.Tensor, grid_hw, count: int, uniforms) -> torch.Tensor:
    """grow_to_count_numpy in torch, on the mask's device: the same masks from the same uniforms.
    uniforms(n) -> n×L float32 tensor in [0, 1)."""
    height, width = grid_hw
    mask = mask.clone()
    rows = (mask.sum(1) < count).nonzero().squeeze(1)
    ranks = torch.arange(mask.shape[1], device=mask.device)
    while len(rows):
        short = mask[rows]
        need = count - short.sum(1)
        frontier = _frontier_torch(short.view(-1, height, width)).view(len(rows), -1)
        size = frontier.sum(1)
        pool = torch.where(size[:, None] > 0, frontier, ~short)
        take = torch.where(size > 0, torch.minimum(need, size), torch.ones_like(size))
        scores = torch.where(pool, uniforms(len(rows)), -1.0)
        order = scores.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, ranks.expand_as(order))
        mask[rows] = short | (rank < take[:, None])
        rows = rows[need > take]
    return mask


def _frontier_numpy(mask: np.ndarray) -> np.ndarray:
    """B×H×W: the unmasked patches with a masked 4-neighbour."""
    near = np.zeros_like(mask)
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    near[:, :, 1:] |= mask[:, :, :-1]
    near[:, :, :-1] |= mask[:, :, 1:]
    return near & ~mask


def _frontier_torch(mask: torch.Tensor) -> torch.Tensor:
    """_frontier_numpy in torch."""
    near = torch.zeros_like(mask)
    near[:, 1:] |= mask[:, :-1]
    near[:, :-1] |= mask[:, 1:]
    near[:, :, 1:] |= mask[:, :, :-1]
    near[:, :, :-1] |= mask[:, :, 1:]
    return near & ~mask
