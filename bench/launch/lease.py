"""Each run runs once: a per-run lease, held by the process executing the run for its whole life.

    results/<study>/<run_id>/
        lease.lock   an empty file; the process running the run holds an exclusive flock on it.
                     Never deleted or replaced (a new inode would be a second, free lock).
        lease.json   who holds it: host, pid, started, heartbeat (rewritten every 30 s by a daemon
                     thread and at every phase change), phase, launcher kind, SLURM job id.
                     Written atomically; removed when the holder lets go.

The flock is the truth, lease.json the description: the OS drops the lock when its holder
dies (kill -9 included), so a lease whose holder died is free and the next `run_one` takes it
over and replaces the stale lease.json. `holder()` asks without taking the lease (a shared,
non-blocking flock probe held for microseconds); `acquire` retries for a moment so that such a
probe is never mistaken for a holder. flock works across nodes on NFS (Linux ≥ 2.6.12 maps it
to a POSIX lock through lockd), on GPFS, and on Lustre mounted with `-o flock`.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import threading
import time
from pathlib import Path

from bench.core.files import atomic_write_text

LOCK_FILE = "lease.lock"
LEASE_FILE = "lease.json"
HEARTBEAT_S = 30.0
ACQUIRE_WAIT_S = 2.0  # longer than any probe holds the lock, far shorter than any run


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def read_lease(folder: Path | str) -> dict | None:
    """The lease.json of a run folder (possibly stale), or None."""
    try:
        record = json.loads((Path(folder) / LEASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def holder(folder: Path | str) -> dict | None:
    """Who holds the run's lease now ({host, pid, heartbeat_age, ...}), or None when it is free.

    Never creates a file: this works on a read-only results folder too."""
    lock = Path(folder) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: nobody ever ran it (or the folder is unreadable)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            record = read_lease(folder) or {}
            if "heartbeat" in record:
                record["heartbeat_age"] = max(0.0, time.time() - float(record["heartbeat"]))
            return record
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe(record: dict) -> str:
    """'HOST pid N' (and the heartbeat's age) of a holder record."""
    text = f"{record.get('host', '?')} pid {record.get('pid', '?')}"
    if record.get("heartbeat_age") is not None:
        text += f", heartbeat {record['heartbeat_age']:.0f} s ago"
    return text


class Lease:
    """The lease of one run folder. `acquire()` returns None when taken, else the holder's record."""

    def __init__(self, folder: Path | str, kind: str = "", heartbeat_s: float = HEARTBEAT_S):
        self.folder, self.kind, self.heartbeat_s = Path(folder), kind, heartbeat_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self.record: dict = {}

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = ACQUIRE_WAIT_S) -> dict | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666 & ~_umask())
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    record = read_lease(self.folder) or {}
                    if "heartbeat" in record:
                        record["heartbeat_age"] = max(0.0, time.time() - float(record["heartbeat"]))
                    return record
                time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
        self._fd = fd
        now = time.time()
        self.record = {"host": platform.node(), "pid": os.getpid(), "started": now, "heartbeat": now,
                       "kind": self.kind, "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "phase": "starting"}
        try:
            self._write()  # replaces a stale lease.json of a holder that died
        except BaseException:
            self.release()
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="mimbench-lease", daemon=True)
        self._thread.start()
        return None

    def set_phase(self, phase: str) -> None:
        if self.held:
            self.record["phase"] = phase
            self._write(quiet=True)

    def _write(self, quiet: bool = False) -> None:
        with self._write_lock:
            self.record["heartbeat"] = time.time()
            try:
                atomic_write_text(self.folder / LEASE_FILE, json.dumps(self.record, sort_keys=True) + "\n")
            except OSError:
                if not quiet:
                    raise  # (a heartbeat on a full disk is skipped; the flock still holds)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._write(quiet=True)

    def release(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        with self._write_lock:
            try:
                (self.folder / LEASE_FILE).unlink(missing_ok=True)
            except OSError:
                pass
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
