"""What `data.train_limit` / `data.test_limit` draw: a seeded, class-stratified subset.

`limit` images of a split of C classes are `limit // C` of each class, the remainder one more to
each of the first classes (in label order); a class with fewer images than its share gives all
it has and the rest is shared the same way among the classes that have more. Within a class the
images are drawn by a fixed seed (SUBSET_SEED, independent of the run's seed: every run of a
study sees the same images) through a counter-based hash (SplitMix64 of seed, split and index):
the draw depends on nothing else — not numpy's or torch's generators — and is the same on every
call and every machine. The subset keeps the split's order. The rule is part of a limited run's
data identity (bench.data.identity.SUBSET_RULE).
"""
from __future__ import annotations

import hashlib

import numpy as np

from bench.data.identity import SUBSET_SEED

_GAMMA, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + _GAMMA
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def class_counts(sizes: list[int], limit: int) -> list[int]:
    """How many images each class gives to a subset of `limit` (at most sum(sizes)): equal shares,
    the remainder to the first classes, a class's shortfall shared among the others."""
    counts = [0] * len(sizes)
    remaining = min(limit, sum(sizes))
    open_classes = [c for c, n in enumerate(sizes) if n > 0]
    while remaining > 0 and open_classes:
        share, extra = divmod(remaining, len(open_classes))
        still_open = []
        for i, c in enumerate(open_classes):
            take = min(share + (i < extra), sizes[c] - counts[c])
            counts[c] += take
            remaining -= take
            if counts[c] < sizes[c]:
                still_open.append(c)
        open_classes = still_open
    return counts


def stratified_subset(labels, limit: int, num_classes: int, split: str) -> np.ndarray:
    """The sorted indices of the `limit` images (of the split `split`, whose labels are `labels`)
    the rule above draws; all of them when `limit` is not smaller than the split."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    if limit >= n:
        return np.arange(n)
    salt = int.from_bytes(hashlib.sha256(f"{SUBSET_SEED}:{split}".encode()).digest()[:8], "little")
    keys = _mix(np.arange(n, dtype=np.uint64) ^ np.uint64(salt))
    sizes = np.bincount(labels, minlength=num_classes).tolist()
    chosen = []
    for c, count in enumerate(class_counts(sizes, limit)):
        if count:
            members = np.flatnonzero(labels == c)
            chosen.append(members[np.argsort(keys[members], kind="stable")[:count]])
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)
