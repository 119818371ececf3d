"""Block-wise masking, BEiT's (Bao et al., 2021, "BEiT: BERT Pre-Training of Image
Transformers"): rectangles of random area and aspect ratio until the target count.

The defaults are BEiT's pre-training ones: a block has at least 16 patches of a 14x14 grid
(`--min_mask_patches_per_block 16`; 4 is only the class default), on other grids
round(16 * L / 196), at least 1 (5 on 8x8): `min_patches: null` in a config, resolved to that
number by the parameter check, so the resolved config shows it. BEiT stops short of the count
when a round finds no block that fits; the missing patches are then grown from the blocks
(`fill: blocks`, counts.grow_to_count_numpy / _torch), which keeps BEiT's regions per mask, or added at random
(`fill: random`, exact_count: the old behaviour, which scatters single patches).

`block_masking` runs BEiT's rounds for the whole batch at once, one rectangle per sample and
round: in NumPy on bit rows on the CPU (`_block_rounds_numpy`), in torch elsewhere or on grids
wider than MAX_BIT_WIDTH (`_block_rounds_torch`). `BlockShape` is what a round draws from.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from bench.masking.counts import (exact_count, exact_count_numpy, grow_to_count_numpy, grow_to_count_torch,
                                  numpy_rng)
from bench.masking.ratios import num_masked


def block_masking(batch, grid_hw, ratio, params, generator, device):
    """BEiT's block-wise masking, one rectangle per round for the whole batch, then exactly k.

    Per sample and round (as BEiT's `_mask`): up to `attempts` candidate rectangles with area
    uniform in [min_patches, max_mask] (max_mask = what is still to be masked, capped by
    max_patches) and log-uniform aspect ratio; the first that adds between 1 and max_mask new
    patches is taken. A sample stops when it reaches the target or no attempt fits; the few
    patches then still missing are grown from the blocks (fill "blocks": frontier patches at
    random) or added anywhere at random (fill "random"), and a sample over the count (none: a
    block never adds more than is missing) would be trimmed at random. How many patches a
    candidate would add is read from an integral image of the mask, so only the chosen
    rectangle of each sample is ever drawn.

    The rounds are sequential and their arrays small (B × attempts), so their cost is the
    per-operation overhead: on the CPU (grids up to 16 wide) they run in NumPy on bit rows,
    where an operation costs a fraction of a torch dispatch; on other devices, or wider grids,
    in torch. Both consume the same uniforms the same way (tests check they give the same masks).
    `params` are resolved ones (masking.resolve_params); params from before `fill` existed
    (no such key) meant the random top-up.
    """
    height, width = grid_hw
    length = height * width
    shape = BlockShape.from_params(params, num_masked(length, ratio))
    grow = params.get("fill", "random") == "blocks"
    tries = shape.attempts
    if device.type == "cpu" and width <= MAX_BIT_WIDTH:
        rng = numpy_rng(generator)
        mask = _block_rounds_numpy(batch, grid_hw, shape,
                                   lambda ids: rng.random((4, len(ids), tries), dtype=np.float32))
        if grow:
            mask = grow_to_count_numpy(mask, grid_hw, shape.target,
                                       lambda n: rng.random((n, length), dtype=np.float32))
        return torch.from_numpy(exact_count_numpy(mask, shape.target, rng))
    mask = _block_rounds_torch(
        batch, grid_hw, shape, lambda: torch.rand(4, batch, tries, generator=generator, device=device), device)
    if grow:
        mask = grow_to_count_torch(mask, grid_hw, shape.target,
                                   lambda n: torch.rand(n, length, generator=generator, device=device))
    return exact_count(mask, shape.target, generator)


@dataclass(frozen=True)
class BlockShape:
    """What block masking draws: target count, area range, log-aspect range, attempts per round."""
    target: int
    min_patches: float
    max_patches: int
    half_log: float   # log(min_aspect) / 2
    half_span: float  # (log(max_aspect) - log(min_aspect)) / 2
    attempts: int

    @classmethod
    def from_params(cls, params: dict, target: int) -> "BlockShape":
        log_lo = math.log(params["min_aspect"])
        log_hi = math.log(params["max_aspect"] or 1 / params["min_aspect"])
        return cls(target, float(params["min_patches"]), params["max_patches"] or target,
                   log_lo / 2, (log_hi - log_lo) / 2, params["attempts"])


MAX_BIT_WIDTH = 16  # the NumPy rounds keep a row as bits and a 2^width-row prefix-count table


@functools.lru_cache(maxsize=None)
def _row_tables(width: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row r (bit x = column x masked): its prefix counts, table[r, X] = masked patches
    among columns < X, and its patches as booleans."""
    rows = np.arange(1 << width)[:, None]
    below = (1 << np.arange(width + 1)) - 1
    return np.bitwise_count(rows & below).astype(np.float32), (rows >> np.arange(width)) & 1 == 1


def _block_rounds_numpy(batch, grid_hw, shape: BlockShape, uniforms) -> np.ndarray:
    """The rounds on the CPU: bool B×L before the top-up. uniforms(ids) -> 4×len(ids)×attempts.

    A mask is H rows of bits; a row's prefix counts come from a table lookup and a matmul sums
    them down the rows into the integral image. Samples leave the arrays when they stop.
    """
    height, width = grid_hw
    target, max_patches = shape.target, shape.max_patches
    prefix_counts, patches = _row_tables(width)
    above = np.tri(height + 1, height, -1, dtype=np.float32)  # above[Y, y] = y < Y
    ys = np.arange(height).reshape(-1, 1)
    rows = np.zeros((height, batch), np.int64)  # bit x of rows[y, b]: patch (y, x) of sample b masked
    finished = np.zeros((height, batch), np.int64)
    ids = np.arange(batch)  # the samples still going
    count = np.zeros((batch, 1), np.float32)
    integral = np.zeros((height + 1) * batch * (width + 1), np.float32)  # [Y, sample, X], all zero
    n, sample_at = batch, np.arange(batch).reshape(batch, 1) * (width + 1)
    while True:
        u = uniforms(ids)
        max_mask = target - count if max_patches >= target else np.minimum(target - count, max_patches)
        side = np.sqrt(shape.min_patches + u[0] * (max_mask - shape.min_patches))
        root_aspect = np.exp(u[1] * shape.half_span + shape.half_log)
        h, w = np.rint(side * root_aspect), np.rint(side / root_aspect)
        box = np.empty((4,) + h.shape, np.int64)  # top, bottom, left, right
        np.floor((height + 1 - h) * u[2], out=box[0], casting="unsafe")
        np.floor((width + 1 - w) * u[3], out=box[2], casting="unsafe")
        np.add(box[0], h, out=box[1], casting="unsafe")
        np.add(box[2], w, out=box[3], casting="unsafe")
        at_rows = box[:2] * (n * (width + 1)) + sample_at
        c = integral.take(at_rows[:, None] + box[None, 2:], mode="clip")  # [top, bottom] × [left, right]
        new = h * w - (c[1, 1] - c[0, 1] - c[1, 0] + c[0, 0])  # patches each candidate would add
        ok = (new > 0) & (new <= max_mask) & (h < height) & (w < width)  # a box too big reads junk: rejected
        pick = np.arange(n), ok.argmax(1)  # the first attempt that worked
        found = ok[pick]
        top_c, bottom_c, left_c, right_c = box[:, pick[0], pick[1]] * found  # an empty box when none did
        bits = ((1 << (right_c - left_c)) - 1) << left_c
        rows |= np.where((ys >= top_c) & (ys < bottom_c), bits, 0)
        count += (new[pick] * found)[:, None]
        going = found & (count[:, 0] < target)
        if not going.all():
            finished[:, ids[~going]] = rows[:, ~going]
            if not going.any():
                break
            ids, rows, count = ids[going], rows[:, going], count[going]
            n, sample_at = len(ids), sample_at[:len(ids)]
        prefix = prefix_counts.take(rows, axis=0)  # H × n × (W+1)
        integral = (above @ prefix.reshape(height, -1)).reshape(-1)
    return patches.take(finished.T, axis=0).reshape(batch, -1)  # B × H × W booleans, flattened


def _block_rounds_torch(batch, grid_hw, shape: BlockShape, uniforms, device) -> torch.Tensor:
    """The rounds in torch on any device: bool B×L before the top-up. uniforms() -> 4×B×attempts."""
    height, width = grid_hw
    target, max_patches = shape.target, shape.max_patches
    tries = shape.attempts
    # all arithmetic in float32 (exact for these small integers): fewer dtype conversions
    rows = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    cols = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    mask = torch.zeros(batch, height, width, device=device)  # 1.0 = masked
    integral = torch.zeros(batch, height + 1, width + 1, device=device)  # masked patches above-left
    flat = integral.view(batch, -1)
    stride = width + 1
    offsets = torch.arange(0, 4 * tries, tries, device=device)  # of top, bottom, left, right in a cat
    count = torch.zeros(batch, 1, device=device)
    active = torch.ones(batch, 1, dtype=torch.bool, device=device)
    while bool(active.any()):
        u = uniforms()
        max_mask = (target - count).clamp_(max=max_patches)  # B×1
        side = u[0].mul(max_mask - shape.min_patches).add_(shape.min_patches).sqrt_()
        root_aspect = u[1].mul(shape.half_span).add_(shape.half_log).exp_()
        h = (side * root_aspect).round_().clamp_(max=height)
        w = (side / root_aspect).round_().clamp_(max=width)
        top = (height + 1 - h).mul_(u[2]).floor_()
        left = (width + 1 - w).mul_(u[3]).floor_()
        bottom, right = top + h, left + w
        row_top, row_bottom = top * stride, bottom * stride
        corners = flat.gather(1, torch.cat([row_bottom + right, row_top + right,
                                            row_bottom + left, row_top + left], dim=1).long())
        c = corners.view(batch, 4, tries)
        new = h * w - (c[:, 0] - c[:, 1] - c[:, 2] + c[:, 3])  # B×A: patches it would add
        valid = (h < height) & (w < width) & (new > 0) & (new <= max_mask) & active
        found = valid.any(dim=1, keepdim=True)
        first = valid.byte().argmax(dim=1, keepdim=True)  # the first attempt that worked
        box = torch.cat([top, bottom, left, right], dim=1).gather(1, first + offsets).unsqueeze(2)  # B×4×1
        in_rows = (rows >= box[:, 0:1]) & (rows < box[:, 1:2]) & found.unsqueeze(2)  # B×H×1
        in_cols = (cols >= box[:, 2:3].transpose(1, 2)) & (cols < box[:, 3:4].transpose(1, 2))  # B×1×W
        mask.masked_fill_(in_rows & in_cols, 1.0)
        count += new.gather(1, first).mul_(found)
        active &= found & (count < target)
        torch.cumsum(mask.cumsum(1), 2, out=integral[:, 1:, 1:])
    return mask.flatten(1) > 0
