"""Masks: which patches a model may not see. One registry of strategies (see strategies.py)."""
from bench.masking.strategies import (GRID_CELLS, MAX_BIT_WIDTH, STRATEGIES, BlockShape, _WALK_CHUNK,  # noqa: F401
                                      _block_rounds_numpy, _block_rounds_torch, _exact_count_torch,
                                      _walker_steps_numpy, _walker_steps_torch, exact_count, generate, grid_cell,
                                      num_masked, resolve_params)
