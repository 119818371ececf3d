"""A content-addressed cache of things runs compute once and share: one place, one rule.

    <results>/_cache/<kind>/<key>.pt

`key` is a digest of everything that determines the thing (the caller computes it: an encoder's
is the run id of its pre-training config, a fitted target's the digest of its fit key), so a
change of any input is a new entry and never a stale hit. Entries are written atomically and
built under a per-entry file lock: two runs that need the same entry at once build it once,
the second waits and loads it. What lives here:

    encoders    a run's pre-trained encoder, shared by runs that differ only in their evals
    targets     fitted reconstruction targets (PCA basis, trained tokenizer)
"""
from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.core.files import atomic_torch_save

CACHE_DIR = "_cache"


def cache_root(results_root: Path | str) -> Path:
    return Path(results_root) / CACHE_DIR


def entry_path(root: Path | str, kind: str, key: str) -> Path:
    return Path(root) / kind / f"{key}.pt"


def save(path: Path, value: Any) -> None:
    """Store an entry atomically: it is either complete or absent."""
    atomic_torch_save(path, value)


def load(path: Path) -> Any | None:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`'s entry while it is built (released if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_or_build(root: Path | str | None, kind: str, key: str, build: Callable[[], Any]) -> Any:
    """The cached value under `key`, built by `build()` and stored the first time.

    With `root` None there is no cache: `build()` runs every time.
    """
    if root is None:
        return build()
    path = entry_path(root, kind, key)
    value = load(path)
    if value is not None:
        return value
    with locked(path):
        value = load(path)  # someone may have built it while we waited
        if value is None:
            value = build()
            save(path, value)
    return value
