"""A real one-node SLURM cluster for tests: the session-scoped fixture `slurm_cluster`.

Use from tests/conftest.py with `from tests.slurm_fixture import slurm_cluster, wait_for_idle`
(or `pytest_plugins = ["tests.slurm_fixture"]`), then ask for `slurm_cluster` in a test.

- If `sinfo` already shows a node idle/mixed/allocated (and `srun` is on PATH, which submitit's
  AutoExecutor needs to pick SLURM), that cluster is used and left alone.
- Otherwise, as root (or with passwordless sudo), `bash scripts/slurm_cluster.sh up` starts one;
  `scripts/slurm_cluster.sh down` stops it at the end of the session.
- If neither works, the test is skipped with "SLURM: <reason>"; with MIMBENCH_REQUIRE_SLURM=1
  (CI) it fails instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "slurm_cluster.sh"
READY_STATES = ("idle", "mixed", "allocated", "completing")
UP_TIMEOUT_S = 600  # includes an apt-get install on a bare machine


@dataclass(frozen=True)
class SlurmCluster:
    partition: str      # default partition ("debug" for the cluster the script starts)
    node: str           # a ready node's name
    cpus: int           # CPUs of that node
    mem_mb: int         # RealMemory of that node
    started_here: bool  # True when this session started it (and will stop it)


def _sinfo(fmt: str) -> list[str]:
    """Lines of `sinfo -h -o FMT`, [] when sinfo is missing or the controller does not answer."""
    if not shutil.which("sinfo"):
        return []
    try:
        out = subprocess.run(["sinfo", "-h", "-o", fmt], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


def _ready_node() -> SlurmCluster | None:
    """A node in a state that takes jobs, or None. (A trailing '*' = not responding; not ready.)"""
    for line in _sinfo("%P|%n|%T|%c|%m"):
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        partition, node, state, cpus, mem = parts
        if state in READY_STATES:
            return SlurmCluster(partition=partition.rstrip("*"), node=node,
                                cpus=int(cpus) if cpus.isdigit() else 0,
                                mem_mb=int(mem) if mem.isdigit() else 0, started_here=False)
    return None


def wait_for_idle(timeout: float = 60.0, poll: float = 0.5) -> bool:
    """Wait until every node of the cluster is idle (no job running or completing).

    Returns True once all nodes that `sinfo` lists are `idle`, False after `timeout` seconds
    (or at once-and-repeatedly False when SLURM does not answer). Useful between tests that
    cancel jobs, since KillWait/cleanup can keep a node `completing` for a while."""
    deadline = time.monotonic() + timeout
    while True:
        states = [s.strip() for s in _sinfo("%T")]
        if states and all(s == "idle" for s in states):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def _can_be_root() -> bool:
    if os.geteuid() == 0:
        return True
    if not shutil.which("sudo"):
        return False
    try:
        return subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _run_script(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout)


def _unavailable(reason: str) -> None:
    msg = f"SLURM: {reason}"
    if os.environ.get("MIMBENCH_REQUIRE_SLURM") == "1":
        pytest.fail(msg + " (MIMBENCH_REQUIRE_SLURM=1)", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def slurm_cluster(request) -> SlurmCluster:
    """A SLURM cluster that submitit's AutoExecutor submits to (partition, node, cpus, mem_mb)."""
    existing = _ready_node()
    if existing is not None:
        if not shutil.which("srun"):
            _unavailable("sinfo answers but srun is not on PATH, so submitit would not pick SLURM")
        return existing

    if not SCRIPT.exists():
        _unavailable(f"no cluster answers and {SCRIPT} is missing")
    if not _can_be_root():
        _unavailable("no cluster answers and starting one needs root (or passwordless sudo)")
    try:
        proc = _run_script("up", UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _run_script("down", 120)
        _unavailable(f"scripts/slurm_cluster.sh up did not finish in {UP_TIMEOUT_S}s")
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        _unavailable(lines[-1] if lines else f"scripts/slurm_cluster.sh up exited {proc.returncode}")

    def _down() -> None:
        try:
            _run_script("down", 120)
        except subprocess.TimeoutExpired:
            pass

    request.addfinalizer(_down)
    started = _ready_node()
    if started is None:
        _unavailable("scripts/slurm_cluster.sh up succeeded but no node is ready")
    if not shutil.which("srun"):
        _unavailable("srun is not on PATH after scripts/slurm_cluster.sh up")
    return SlurmCluster(partition=started.partition, node=started.node, cpus=started.cpus,
                        mem_mb=started.mem_mb, started_here=True)
