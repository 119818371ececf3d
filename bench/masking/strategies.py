"""Masking strategies: one registry, batched array code (torch on the model's device; NumPy for
the sequential loops of block and walker on the CPU, where its per-operation cost is lower).

Every strategy returns a B×L boolean mask (True = masked, L = grid height × width, row-major)
with exactly `num_masked(L, ratio)` masked patches in every sample, so MAE's gather of the
visible tokens works for all of them. Randomness comes only from the torch.Generator passed
in (NumPy draws from a generator seeded by it): the same seed gives the same masks. No Python
loop runs over samples; block and walker loop over rounds or steps for the whole batch at once.

    random  MAE: a uniformly random subset per sample (argsort of noise).
    block   BEiT: rectangles of random area and aspect ratio until the target count.
    grid    MAE Table 1f: a regular pattern keeping one patch of every a×b cell.
    walker  a random walk over the patch grid, masking what it visits; jumps when stuck.
    tube    VideoMAE: one spatial mask (of any strategy) repeated over all frames.
    coarse  SimMIM: random masking of larger cells (`scale`×`scale` patches), upsampled.
    multi   per sample, a strategy drawn with probability proportional to its weight.

With `frames=T`, `generate` returns B×T×L: tube repeats one spatial mask over the frames,
every other strategy masks each frame independently.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bench.core.errors import ConfigError


def num_masked(num_patches: int, ratio: float) -> int:
    """round(ratio × L), kept within [1, L-1] so no sample is fully masked or fully visible."""
    return min(max(int(math.floor(ratio * num_patches + 0.5)), 1), num_patches - 1)


def exact_count(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Trim or top up each row of `mask` at random to exactly `count` True entries.

    Masked positions score in [1, 2), unmasked ones in [0, 1) (float64 noise: no ties); the
    `count` highest scores keep every already-masked patch first, then fill with random
    unmasked ones (or, when a row has too many, keep a random subset of its masked ones).
    The k-th smallest score is the threshold: a selection, cheaper than a sort. On the CPU
    in NumPy (a third of the time of the same torch calls), elsewhere in torch.
    """
    if mask.device.type == "cpu":
        return torch.from_numpy(_exact_count_numpy(mask.numpy(), count, numpy_rng(generator)))
    return _exact_count_torch(mask, count, generator)


def _exact_count_torch(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
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


def _exact_count_numpy(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
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


# ----------------------------------------------------------------------------- strategies
def random_masking(batch, grid_hw, ratio, params, generator, device):
    length = grid_hw[0] * grid_hw[1]
    noise = torch.rand(batch, length, generator=generator, device=device)
    masked_ids = noise.argsort(dim=1)[:, length - num_masked(length, ratio):]
    return torch.zeros(batch, length, dtype=torch.bool, device=device).scatter_(1, masked_ids, True)


def block_masking(batch, grid_hw, ratio, params, generator, device):
    """BEiT's block-wise masking, one rectangle per round for the whole batch.

    Per sample and round (as BEiT's `_mask`): up to `attempts` candidate rectangles with area
    uniform in [min_patches, max_mask] (max_mask = what is still to be masked, capped by
    max_patches) and log-uniform aspect ratio; the first that adds between 1 and max_mask new
    patches is taken. A sample stops when it reaches the target or no attempt fits; the few
    patches then still missing are topped up at random (exact_count). How many patches a
    candidate would add is read from an integral image of the mask, so only the chosen
    rectangle of each sample is ever drawn.

    The rounds are sequential and their arrays small (B × attempts), so their cost is the
    per-operation overhead: on the CPU (grids up to 16 wide) they run in NumPy on bit rows,
    where an operation costs a fraction of a torch dispatch; on other devices, or wider grids,
    in torch. Both consume the same uniforms the same way (tests check they give the same masks).
    """
    height, width = grid_hw
    shape = BlockShape.from_params(params, num_masked(height * width, ratio))
    tries = shape.attempts
    if device.type == "cpu" and width <= MAX_BIT_WIDTH:
        rng = numpy_rng(generator)
        mask = _block_rounds_numpy(batch, grid_hw, shape,
                                   lambda ids: rng.random((4, len(ids), tries), dtype=np.float32))
        return torch.from_numpy(_exact_count_numpy(mask, shape.target, rng))
    mask = _block_rounds_torch(
        batch, grid_hw, shape, lambda: torch.rand(4, batch, tries, generator=generator, device=device), device)
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


def grid_cell(ratio: float) -> tuple[int, int]:
    """The a×b cell (a <= b, most square first) whose one-kept-patch pattern masks `ratio`."""
    return min(GRID_CELLS, key=lambda c: (abs(1 - 1 / (c[0] * c[1]) - ratio), c[1] - c[0]))


GRID_CELLS = [(a, b) for a in range(1, 5) for b in range(a, 5) if a * b >= 2]
GRID_TOLERANCE = 0.02


def grid_masking(batch, grid_hw, ratio, params, generator, device):
    """Keep one patch of every a×b cell: 2×2 masks 75%, 1×2 50%, 3×3 88.9%, 4×4 93.75%."""
    height, width = grid_hw
    a, b = params["cell"] or grid_cell(ratio)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    if params["random_offset"]:
        u = torch.rand(batch, 2, generator=generator, device=device)
        offset = torch.stack([(u[:, 0] * a).long(), (u[:, 1] * b).long()], dim=1)
    else:
        offset = torch.zeros(batch, 2, dtype=torch.long, device=device)
    keep = ((rows - offset[:, 0, None, None]) % a == 0) & ((cols - offset[:, 1, None, None]) % b == 0)
    # a grid that the cell does not divide evenly is off by a few patches: trim/top up at random
    return exact_count((~keep).flatten(1), num_masked(height * width, ratio), generator)


_STEPS = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])  # up, down, left, right


def walker_masking(batch, grid_hw, ratio, params, generator, device):
    """A random walk per sample, all samples stepping together, masking every patch it visits.

    Start at a random patch; each step goes up, down, left or right (a step off the grid stays
    put). After `restart_after` steps in a row that mask nothing new, the walker jumps to a
    random unmasked patch. Each step masks at most one patch, so it stops exactly on target.

    Hundreds of sequential steps of tiny operations: on the CPU they run in NumPy, the walks
    still going kept together (an operation costs a fraction of a torch dispatch); elsewhere in
    torch. Both read the same draws the same way (a test checks they give the same masks).
    """
    height, width = grid_hw
    target = num_masked(height * width, ratio)
    restart_after = params["restart_after"]
    if device.type == "cpu":
        rng = numpy_rng(generator)
        return torch.from_numpy(_walker_steps_numpy(
            batch, grid_hw, target, restart_after, rng.random(batch),
            lambda chunk: rng.random((chunk, batch)), lambda ids: rng.random((len(ids), height * width))))
    return _walker_steps_torch(
        batch, grid_hw, target, restart_after, torch.rand(batch, generator=generator, device=device),
        lambda chunk: torch.rand(chunk, batch, generator=generator, device=device),
        lambda: torch.rand(batch, height * width, generator=generator, device=device), device)


_WALK_CHUNK = 32  # steps per draw of random moves


def _walker_steps_numpy(batch, grid_hw, target, restart_after, start, moves, jump_noise) -> np.ndarray:
    """The walks in NumPy: bool B×L. start: B uniforms; moves(chunk) -> chunk×B uniforms (one
    step of every sample per row); jump_noise(ids) -> len(ids)×L uniforms for the walks that jump."""
    height, width = grid_hw
    length = height * width
    step_rows, step_cols = _STEPS[:, 0].numpy(), _STEPS[:, 1].numpy()
    mask = np.zeros((batch, length), dtype=bool)
    pos = (start * length).astype(np.int64)
    mask[np.arange(batch), pos] = True
    ids = np.arange(batch)  # the walks still going; pos, count, stalled are theirs
    count = np.ones(batch, dtype=np.int64)
    stalled = np.zeros(batch, dtype=np.int64)
    while True:
        for row in moves(_WALK_CHUNK):
            going = count < target
            if not going.all():
                if not going.any():
                    return mask
                ids, pos, count, stalled = ids[going], pos[going], count[going], stalled[going]
            move = (row[ids] * 4).astype(np.int64)
            r, c = pos // width + step_rows[move], pos % width + step_cols[move]
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            pos = np.where(inside, r * width + c, pos)
            new = ~mask[ids, pos]
            stalled = np.where(new, 0, stalled + 1)
            stuck = stalled >= restart_after
            if stuck.any():  # jump to a random unmasked patch
                jumpers = np.flatnonzero(stuck)
                pos[jumpers] = (jump_noise(ids[jumpers]) + ~mask[ids[jumpers]]).argmax(1)
                new[jumpers] = True
                stalled[jumpers] = 0
            mask[ids, pos] |= new
            count += new


def _walker_steps_torch(batch, grid_hw, target, restart_after, start, moves, jump_noise, device) -> torch.Tensor:
    """The walks in torch on any device: bool B×L. start: B uniforms; moves(chunk) -> chunk×B
    uniforms; jump_noise() -> B×L uniforms."""
    height, width = grid_hw
    length = height * width
    steps = _STEPS.to(device)
    every = torch.arange(batch, device=device)
    mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
    pos = (start * length).long()
    mask[every, pos] = True
    count = torch.ones(batch, dtype=torch.long, device=device)
    stalled = torch.zeros(batch, dtype=torch.long, device=device)
    while True:
        for row in moves(_WALK_CHUNK):
            active = count < target
            if not bool(active.any()):
                return mask
            move = (row * 4).long()
            r = pos // width + steps[move, 0]
            c = pos % width + steps[move, 1]
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            pos = torch.where(inside & active, r * width + c, pos)
            new = active & ~mask[every, pos]
            stalled = torch.where(new, 0, stalled + 1)
            stuck = active & (stalled >= restart_after)
            if bool(stuck.any()):  # jump to a random unmasked patch
                jump = (jump_noise() + (~mask).float()).argmax(1)
                pos = torch.where(stuck, jump, pos)
                new |= stuck
                stalled = torch.where(stuck, 0, stalled)
            mask[every, pos] |= new
            count += new.long()


def tube_masking(batch, grid_hw, ratio, params, generator, device):
    """The spatial mask of one frame; `generate` repeats it over the frames."""
    return generate(params["spatial"], batch, grid_hw, ratio, params["spatial_params"], generator, device)


def coarse_masking(batch, grid_hw, ratio, params, generator, device):
    """SimMIM: random masking on a grid of `scale`×`scale`-patch cells, upsampled to patches."""
    height, width = grid_hw
    scale = params["scale"]
    coarse_hw = (math.ceil(height / scale), math.ceil(width / scale))
    cells = random_masking(batch, coarse_hw, ratio, {}, generator, device).view(batch, *coarse_hw)
    fine = cells.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)[:, :height, :width]
    return exact_count(fine.flatten(1), num_masked(height * width, ratio), generator)


def multi_masking(batch, grid_hw, ratio, params, generator, device):
    """Per sample, one strategy drawn with probability proportional to its weight."""
    names = list(params["weights"])
    weights = torch.tensor([float(params["weights"][n]) for n in names], device=device)
    choice = torch.multinomial(weights, batch, replacement=True, generator=generator)
    mask = torch.zeros(batch, grid_hw[0] * grid_hw[1], dtype=torch.bool, device=device)
    for i, name in enumerate(names):
        rows = (choice == i).nonzero().squeeze(1)
        if len(rows):
            mask[rows] = generate(name, len(rows), grid_hw, ratio, params["params"][name], generator, device)
    return mask


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Strategy:
    generate: Callable  # (batch, grid_hw, ratio, params, generator, device) -> bool B×L
    defaults: dict = field(default_factory=dict)
    types: dict = field(default_factory=dict)  # parameter -> type, where the default is None
    doc: str = ""


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(random_masking, {}, {}, "uniform random subset per sample (MAE)"),
    "block": Strategy(block_masking, {"min_patches": 4, "max_patches": None, "min_aspect": 0.3,
                                      "max_aspect": None, "attempts": 10},
                      {"max_patches": int, "max_aspect": float}, "rectangles of random area and aspect ratio (BEiT)"),
    "grid": Strategy(grid_masking, {"cell": None, "random_offset": False}, {"cell": list},
                     "keep one patch of every a×b cell (MAE Table 1f)"),
    "walker": Strategy(walker_masking, {"restart_after": 4}, {}, "a random walk masking what it visits"),
    "tube": Strategy(tube_masking, {"spatial": "random", "spatial_params": {}}, {},
                     "one spatial mask for every frame (VideoMAE)"),
    "coarse": Strategy(coarse_masking, {"scale": 2}, {}, "random at a coarser mask-patch size (SimMIM)"),
    "multi": Strategy(multi_masking, {"weights": {"random": 1.0, "block": 1.0}, "params": {}}, {},
                      "a strategy drawn per sample by weight"),
}


def _check_range(key: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"masking.params.{key}", f"{value!r} is out of range; allowed: {allowed}")


def resolve_params(name: str, params: dict, ratio: float, grid_hw: tuple[int, int], _prefix: str = "") -> dict:
    """Check a strategy's parameters and fill in its defaults (raises one-line ConfigError)."""
    if name not in STRATEGIES:
        raise ConfigError(f"masking.{_prefix}strategy" if not _prefix else f"masking.params.{_prefix}",
                          f"{name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    strategy = STRATEGIES[name]
    defaults = strategy.defaults
    if not isinstance(params or {}, dict):
        raise ConfigError("masking.params", f"{params!r} has the wrong type; allowed: a mapping")
    params = dict(params or {})
    for key in params:
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ConfigError(f"masking.params.{_prefix}{key}",
                              f"unknown parameter of strategy {name!r}; allowed: {allowed}")
    out = {**defaults, **params}
    for key, value in out.items():
        kind = type(defaults[key]) if defaults[key] is not None else strategy.types[key]
        if value is None and defaults[key] is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ConfigError(f"masking.params.{_prefix}{key}",
                              f"{value!r} has the wrong type; allowed: {kind.__name__}")
        out[key] = value

    if name == "block":
        _check_range(_prefix + "min_patches", out["min_patches"], out["min_patches"] >= 1, ">= 1")
        _check_range(_prefix + "min_aspect", out["min_aspect"], 0 < out["min_aspect"] <= 1, "0 < x <= 1")
        _check_range(_prefix + "attempts", out["attempts"], out["attempts"] >= 1, ">= 1")
    elif name == "grid":
        cell = out["cell"]
        if cell is not None:
            _check_range(_prefix + "cell", cell, len(cell) == 2 and all(isinstance(v, int) and v >= 1 for v in cell)
                         and cell[0] * cell[1] >= 2, "[a, b], two integers >= 1 with a*b >= 2")
        cell = tuple(cell) if cell else grid_cell(ratio)
        pattern = 1 - 1 / (cell[0] * cell[1])
        if abs(pattern - ratio) > GRID_TOLERANCE:
            hits = ", ".join(f"{1 - 1 / (a * b):.4g} ({a}x{b})" for a, b in GRID_CELLS)
            raise ConfigError("masking.ratio", f"{ratio} cannot be made by grid masking "
                                               f"({cell[0]}x{cell[1]} cell masks {pattern:.4g}); "
                                               f"allowed: 1 - 1/(a*b) within {GRID_TOLERANCE}: {hits}")
    elif name == "walker":
        _check_range(_prefix + "restart_after", out["restart_after"], out["restart_after"] >= 1, ">= 1")
    elif name == "coarse":
        _check_range(_prefix + "scale", out["scale"], out["scale"] >= 1, ">= 1")
    elif name == "tube":
        if out["spatial"] in ("tube", "multi") or out["spatial"] not in STRATEGIES:
            allowed = ", ".join(s for s in STRATEGIES if s not in ("tube", "multi"))
            raise ConfigError("masking.params.spatial", f"{out['spatial']!r} is not allowed; allowed: {allowed}")
        out["spatial_params"] = resolve_params(out["spatial"], out["spatial_params"], ratio, grid_hw,
                                               _prefix="spatial_params.")
    elif name == "multi":
        weights = out["weights"]
        allowed = ", ".join(s for s in STRATEGIES if s not in ("tube", "multi"))
        for key, weight in weights.items():
            if key not in STRATEGIES or key in ("tube", "multi"):
                raise ConfigError(f"masking.params.weights.{key}", f"not a strategy to mix; allowed: {allowed}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"masking.params.weights.{key}", f"{weight!r} is not allowed; allowed: a number >= 0")
        if not weights or sum(weights.values()) <= 0:
            raise ConfigError("masking.params.weights", "needs at least one positive weight")
        for key in out["params"]:
            if key not in weights:
                raise ConfigError(f"masking.params.params.{key}", f"not in weights; allowed: {', '.join(weights)}")
        out["weights"] = {k: float(v) for k, v in weights.items()}
        out["params"] = {k: resolve_params(k, out["params"].get(k, {}), ratio, grid_hw, _prefix=f"params.{k}.")
                         for k in weights}
    return out


def generate(name: str, batch: int, grid_hw: tuple[int, int], ratio: float, params: dict,
             generator: torch.Generator, device: torch.device | str = "cpu", frames: int | None = None) -> torch.Tensor:
    """A B×L boolean mask (True = masked) with exactly num_masked(L, ratio) True per row.

    With `frames`, a B×T×L mask: tube repeats one spatial mask, the others mask frames independently.
    """
    device = torch.device(device)
    make = STRATEGIES[name].generate
    if frames is None:
        return make(batch, tuple(grid_hw), ratio, params, generator, device)
    if name == "tube":
        return make(batch, tuple(grid_hw), ratio, params, generator, device).unsqueeze(1).expand(-1, frames, -1)
    return make(batch * frames, tuple(grid_hw), ratio, params, generator, device).view(batch, frames, -1)
