"""The one atomic write: a temporary file in the same folder, fsynced, renamed over the target,
and the folder fsynced — readers see the whole old file or the whole new one, after a crash too.
Files get the permissions the user's umask gives a new file (group-readable by default).
Every writer of results, configs, caches, checkpoints, reports and pictures goes through here.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path | str, write: Callable[[IO], Any], binary: bool = True) -> None:
    """Call `write(file)` on a temporary file beside `path`, then make it `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes files private; results are for colleagues too
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def atomic_torch_save(path: Path | str, value: Any) -> None:
    """torch.save, atomically: the file is either complete or absent."""
    import torch

    atomic_write(path, lambda f: torch.save(value, f))


def atomic_savefig(fig, path: Path | str, **kwargs) -> None:
    """A matplotlib figure saved atomically (the format from the file's suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))
