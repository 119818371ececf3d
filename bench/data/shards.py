"""A DDP rank's share of each global batch: the rows it reads, decodes, augments and trains on.

The global batch of step k is rows k·B … (k+1)·B of the epoch's order (a function of seed and
epoch only, bench.data.datasets.batch_order); rank r of W takes rows share(n, r, W) of it. So the
ranks' shares are disjoint, their union is the single-process batch in its order, and a run's
numbers do not depend on how many processes read its data. Random draws per sample (crops,
flips, masks) are made for the whole batch and sliced, so each row gets what it gets alone.
"""
from __future__ import annotations

Shard = tuple[int, int]  # (rank, world)
WHOLE: Shard = (0, 1)


def share(n: int, rank: int, world: int) -> slice:
    """The rows of a batch of n that rank `rank` of `world` takes (contiguous, sizes differing by at most 1)."""
    return slice(rank * n // world, (rank + 1) * n // world)


def step_rows(order: list[int], batch_size: int, drop_last: bool, start: int = 0,
              shard: Shard = WHOLE) -> list[list[int]]:
    """The sample indices this rank reads at each step from step `start` on: its share of every
    global batch cut from `order` (the last, short batch dropped with `drop_last`)."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    steps = []
    for lo in range(start * batch_size, stop, batch_size):
        batch = order[lo:lo + batch_size]
        steps.append(batch[share(len(batch), *shard)])
    return steps
