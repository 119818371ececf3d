"""A content-addressed cache of things runs compute once and share: one place, one rule.

    <results>/_cache/<kind>/<key>.pt

`key` is a digest of everything that determines the thing (the caller computes it: an encoder's
is the run id of its pre-training config, a fitted target's the digest of its fit key), so a
change of any input is a new entry and never a stale hit. Entries are written atomically and
built under a per-entry file lock: two runs that need the same entry at once build it once,
the second waits and loads it. What lives here:

    encoders    a run's pre-trained encoder, shared by runs that differ only in their evals
    targets     fitted reconstruction targets (PCA basis, trained tokenizer)

An entry that cannot be read back (cut short, garbage) is a miss, never a crash: the builder,
holding the entry's lock, renames it to `<key>.pt.corrupt-<time>`, warns (`warn`, else stderr)
and builds it again. Temporary files a killed writer left for an entry are removed by the next
builder of that entry (under its lock, so never a live writer's).
"""
from __future__ import annotations

import fcntl
import sys
import time
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


class Corrupt(Exception):
    """An entry that exists but cannot be read back."""


def _read(path: Path) -> Any | None:
    """The entry, None when absent; raises Corrupt when it cannot be read back."""
    import torch

    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise Corrupt(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err


def load(path: Path) -> Any | None:
    """The entry, or None when it is absent or cannot be read back (a miss: build it again)."""
    try:
        return _read(path)
    except Corrupt:
        return None


def _warn(message: str) -> None:
    print(f"mimbench: warning: {message}", file=sys.stderr)


def set_aside(path: Path, problem: str, warn: Callable[[str], None] | None = None) -> Path | None:
    """Rename a corrupt entry to <key>.pt.corrupt-<time> (call with its lock held) and warn."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}")
    try:
        path.rename(aside)
    except FileNotFoundError:
        return None
    (warn or _warn)(f"cache entry {path} could not be read ({problem}); set aside as {aside.name}, building it again")
    return aside


def clean_temp_files(path: Path) -> None:
    """Remove temporaries a killed writer of this entry left (call with its lock held)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


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


def get_or_build(root: Path | str | None, kind: str, key: str, build: Callable[[], Any],
                 warn: Callable[[str], None] | None = None) -> Any:
    """The cached value under `key`, built by `build()` and stored the first time.

    With `root` None there is no cache: `build()` runs every time. A corrupt entry is set aside
    (see above) and built again; `warn` gets the one-line notice.
    """
    if root is None:
        return build()
    path = entry_path(root, kind, key)
    value = load(path)
    if value is not None:
        return value
    with locked(path):
        try:
            value = _read(path)  # someone may have built it while we waited
        except Corrupt as err:
            set_aside(path, str(err), warn)
            value = None
        if value is None:
            clean_temp_files(path)
            value = build()
            save(path, value)
    return value
