"""From a mask ratio to patch counts, in pure Python (no torch, no NumPy: the registry's
parameter checks use it while a config is validated, and that must stay quick).

    num_masked(L, ratio)   how many of L patches every strategy masks, in every sample
    grid_cell(ratio)       the a×b cell whose one-kept-patch pattern (MAE Table 1f) masks `ratio`
    GRID_CELLS             the cells grid masking can use (a <= b <= 4)
    GRID_TOLERANCE         how far a ratio may be from a cell's 1 - 1/(a·b)
"""
from __future__ import annotations

import math


def num_masked(num_patches: int, ratio: float) -> int:
    """round(ratio × L), kept within [1, L-1] so no sample is fully masked or fully visible."""
    return min(max(int(math.floor(ratio * num_patches + 0.5)), 1), num_patches - 1)


GRID_CELLS = [(a, b) for a in range(1, 5) for b in range(a, 5) if a * b >= 2]
GRID_TOLERANCE = 0.02


def grid_cell(ratio: float) -> tuple[int, int]:
    """The a×b cell (a <= b, most square first) whose one-kept-patch pattern masks `ratio`."""
    return min(GRID_CELLS, key=lambda c: (abs(1 - 1 / (c[0] * c[1]) - ratio), c[1] - c[0]))
