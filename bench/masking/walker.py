"""Random-walk masking (this benchmark's own, not from a paper): a walker per sample steps over
the patch grid, masking every patch it visits, and jumps to a random unmasked patch when it
keeps revisiting.

`walker_masking` steps all samples together: in NumPy on the CPU (`_walker_steps_numpy`), in
torch elsewhere (`_walker_steps_torch`); both read the same draws the same way.
"""
from __future__ import annotations

import numpy as np
import torch

from bench.masking.counts import numpy_rng
from bench.masking.ratios import num_masked


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
