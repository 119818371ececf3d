"""Per-sample reference versions of the strategies: Python loops over one sample at a time,
written like BEiT's MaskingGenerator, straight from each strategy's description. Slow on
purpose: they are what the batched strategies are checked against (tests compare their
masks' statistics) and timed against (`mimbench bench masks`, bench.benchmarks.masks).

    REFERENCES                  strategy name -> reference(grid_hw, ratio, params, rng): bool L
    reference_batch(name, ...)  `batch` samples of one reference, a bool B×L tensor
    reference_block_rounds      BEiT's block masking as BEiT has it: no top-up to the exact count

They draw from a NumPy generator of their own, so their masks differ from the batched ones
sample by sample; only grid (no randomness at its defaults) gives the same masks.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from bench.masking import num_masked, resolve_params
from bench.masking.ratios import grid_cell


def _exact_count(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Top up (random unmasked patches) or trim (random masked ones) to exactly `count`."""
    mask = mask.copy()
    have = int(mask.sum())
    if have < count:
        mask[rng.choice(np.flatnonzero(~mask), count - have, replace=False)] = True
    elif have > count:
        mask[rng.choice(np.flatnonzero(mask), have - count, replace=False)] = False
    return mask


def reference_random(grid_hw, ratio, params, rng):
    """A uniformly random subset of exactly k = num_masked(L, ratio) patches."""
    length = grid_hw[0] * grid_hw[1]
    mask = np.zeros(length, dtype=bool)
    mask[rng.choice(length, num_masked(length, ratio), replace=False)] = True
    return mask


def reference_block_rounds(grid_hw, ratio, params, rng):
    """BEiT's MaskingGenerator as it is, no top-up: an H×W bool mask, often a few patches short.

    Per round one block: up to `attempts` tries of area uniform in [min_patches, max_mask]
    (max_mask = what is still to be masked, capped by max_patches), aspect ratio log-uniform in
    [min_aspect, max_aspect], h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)),
    kept only if h < height and w < width, top and left uniform; the first try adding between 1
    and max_mask new patches is the round's block. A round adding nothing ends the mask.
    """
    params = resolve_params("block", params, ratio, grid_hw)
    height, width = grid_hw
    target = num_masked(height * width, ratio)
    min_patches = params["min_patches"]
    max_patches = params["max_patches"] or target
    min_aspect = params["min_aspect"]
    max_aspect = params["max_aspect"] or 1 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    mask = np.zeros((height, width), dtype=bool)
    count = 0
    while count < target:
        max_mask = min(target - count, max_patches)
        delta = 0
        for _ in range(params["attempts"]):
            area = min_patches + (max_mask - min_patches) * rng.random()  # random.uniform: low may exceed high
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if h < height and w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= max_mask:
                    mask[top:top + h, left:left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask


def _grow_to_count(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Top up an H×W mask by growing its blocks: each pass masks min(missing, frontier) patches
    drawn at random from the frontier (unmasked patches with a masked 4-neighbour); with no
    frontier (nothing masked) one random unmasked patch, which the next pass grows from."""
    mask = mask.copy()
    height, width = mask.shape
    while mask.sum() < count:
        frontier = []
        for r in range(height):
            for c in range(width):
                if not mask[r, c] and any(0 <= r + dr < height and 0 <= c + dc < width and mask[r + dr, c + dc]
                                          for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))):
                    frontier.append((r, c))
        if not frontier:
            free = np.flatnonzero(~mask.ravel())
            mask.ravel()[rng.choice(free)] = True
            continue
        for i in rng.choice(len(frontier), min(count - int(mask.sum()), len(frontier)), replace=False):
            mask[frontier[i]] = True
    return mask


def reference_block(grid_hw, ratio, params, rng):
    """BEiT's MaskingGenerator (reference_block_rounds), then exactly k: grown from the blocks
    (fill "blocks") or topped up with random patches (fill "random")."""
    params = resolve_params("block", params, ratio, grid_hw)
    target = num_masked(grid_hw[0] * grid_hw[1], ratio)
    mask = reference_block_rounds(grid_hw, ratio, params, rng)
    if params["fill"] == "random":
        return _exact_count(mask.ravel(), target, rng)
    return _grow_to_count(mask, target, rng).ravel()


def reference_grid(grid_hw, ratio, params, rng):
    """Keep one patch of every a×b cell (row % a == 0 and col % b == 0), then exactly k."""
    params = resolve_params("grid", params, ratio, grid_hw)
    height, width = grid_hw
    a, b = params["cell"] or grid_cell(ratio)
    off_r, off_c = (int(rng.random() * a), int(rng.random() * b)) if params["random_offset"] else (0, 0)
    mask = np.ones((height, width), dtype=bool)
    for r in range(height):
        for c in range(width):
            if (r - off_r) % a == 0 and (c - off_c) % b == 0:
                mask[r, c] = False
    return _exact_count(mask.ravel(), num_masked(height * width, ratio), rng)


def reference_walker(grid_hw, ratio, params, rng):
    """A random walk masking what it visits; after `restart_after` idle steps, jump to an unmasked patch."""
    params = resolve_params("walker", params, ratio, grid_hw)
    height, width = grid_hw
    length = height * width
    target = num_masked(length, ratio)
    mask = np.zeros(length, dtype=bool)
    pos = int(rng.integers(length))
    mask[pos] = True
    count, stalled = 1, 0
    while count < target:
        dr, dc = ((-1, 0), (1, 0), (0, -1), (0, 1))[rng.integers(4)]
        r, c = pos // width + dr, pos % width + dc
        if 0 <= r < height and 0 <= c < width:
            pos = r * width + c
        if not mask[pos]:
            mask[pos] = True
            count += 1
            stalled = 0
            continue
        stalled += 1
        if stalled >= params["restart_after"]:
            pos = int(rng.choice(np.flatnonzero(~mask)))
            mask[pos] = True
            count += 1
            stalled = 0
    return mask


def reference_coarse(grid_hw, ratio, params, rng):
    """SimMIM: random cells of `scale`×`scale` patches on the coarse grid, cropped, then exactly k."""
    params = resolve_params("coarse", params, ratio, grid_hw)
    height, width = grid_hw
    scale = params["scale"]
    coarse_h, coarse_w = math.ceil(height / scale), math.ceil(width / scale)
    cells = reference_random((coarse_h, coarse_w), ratio, {}, rng).reshape(coarse_h, coarse_w)
    mask = np.zeros((height, width), dtype=bool)
    for r in range(height):
        for c in range(width):
            mask[r, c] = cells[r // scale, c // scale]
    return _exact_count(mask.ravel(), num_masked(height * width, ratio), rng)


REFERENCES = {
    "random": reference_random,
    "block": reference_block,
    "grid": reference_grid,
    "walker": reference_walker,
    "coarse": reference_coarse,
}


def reference_batch(name: str, batch: int, grid_hw, ratio: float, params: dict, seed: int) -> torch.Tensor:
    """`batch` samples of the reference generator `name`, one at a time: a bool B×L tensor."""
    rng = np.random.default_rng(seed)
    make = REFERENCES[name]
    return torch.from_numpy(np.stack([make(tuple(grid_hw), ratio, params, rng) for _ in range(batch)]))
