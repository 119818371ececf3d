"""Grid masking, MAE's regular pattern (He et al., 2021, Table 1f "grid-wise"): keep one patch
of every a×b cell. The cells and the ratios they make are in ratios.py (torch-free: the
registry's check uses them).
"""
from __future__ import annotations

import torch

from bench.masking.counts import exact_count
from bench.masking.ratios import grid_cell, num_masked


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
