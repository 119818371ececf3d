"""Each run runs once: launches started together share a study's runs through the per-run lease.

Real processes throughout: two `mimbench run --executor local` started at the same moment on
one results folder; a lease held by another live process (a subprocess holding it) makes
`run_one` and the launcher leave the run alone, and `status` show it as running; the lease of
a holder killed with SIGKILL is free and taken over.
"""
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.cli import main
from bench.launch import lease as leases
from bench.launch.job import run_one
from bench.launch.status import clear_submitting, study_status, write_submitting
from bench.launch.store import RunFolder
from bench.data import identity_digest
from bench.study.config import resolve
from bench.study.run_ids import run_id

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time; from bench.launch.lease import Lease; lease = Lease(sys.argv[1], kind='test'); "
        "assert lease.acquire() is None; print('held', flush=True); time.sleep(600)")


def small(tiny_base):
    tiny_base["data"] = {"name": "synthetic", "train_limit": 64, "test_limit": 32, "img_size": 16}
    return tiny_base


def identified(config):
    """The config as load_study makes it (a launch of a spec): data.identity filled in."""
    config["data"]["identity"] = identity_digest(config["data"], None)
    return config


def write_spec(tmp_path, base, name="conc", seeds=(0,), launch=None):
    spec = {"name": name, "base": base, "seeds": list(seeds), "launch": launch or {}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def files_of(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time: what 'not touched' compares."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def hold_lease(folder: Path) -> subprocess.Popen:
    """Another live process holding the run's lease."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_two_launches_started_together_run_each_run_once(tmp_path, tiny_base):
    base = small(tiny_base)
    spec = write_spec(tmp_path, base, seeds=(0, 1, 2), launch={"executor": "local", "parallel": 1, "timeout_min": 5})
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "bench", "run", str(spec), "--executor", "local", "--results", str(results),
           "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    summaries = []
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        [line] = [ln for ln in err.splitlines() if " finished, " in ln]
        summaries.append(line)
        assert " 0 failed" in line, err
    # each run finished in exactly one of the two launches; the other saw it running or done
    assert sum(int(line.split(" finished")[0].split()[-1]) for line in summaries) == 3, summaries
    study_dir = results / "conc"
    runs = [p for p in study_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 3
    for path in runs:
        folder = RunFolder(results, "conc", path.name)
        assert folder.is_done()
        rows = folder.read_metrics()
        keys = [(r["phase"], r["epoch"]) for r in rows]
        assert len(keys) == len(set(keys)), f"a phase ran twice in {path.name}: {keys}"
        assert [r["epoch"] for r in rows if r["phase"] == "pretrain"] == [1, 2]
        assert not (path / "resumed.log").exists() and not (path / "error.txt").exists()
        assert not (path / "lease.json").exists() and not list(path.glob(".*.tmp"))
    assert {s.state for s in study_status(study_dir)} == {"done"}


def test_a_held_lease_is_left_alone_and_shows_as_running(tmp_path, tiny_base, capsys):
    config = identified(resolve(small(tiny_base)))  # as a launch of the spec below makes it
    rid = run_id(config)
    root = tmp_path / "results"
    folder = RunFolder(root, "s", rid)
    holder = hold_lease(folder.path)
    try:
        before = files_of(folder.path)
        out = run_one(config, "s", str(root), {"device": "cpu", "threads": 1})
        assert out["status"] == "running_elsewhere"
        assert out["message"].startswith(f"already running on {platform.node()} pid {holder.pid}")
        assert files_of(folder.path) == before  # not a byte touched

        [status] = study_status(root / "s", [rid])
        assert status.state == "running" and f"pid {holder.pid}" in status.detail and "heartbeat" in status.detail
        assert main(["status", "s", "--results", str(root)]) == 0
        assert "running" in capsys.readouterr().out

        # the launcher leaves it to its holder: counted apart, not failed, not done
        spec = write_spec(tmp_path, small(tiny_base), name="s")
        assert main(["run", str(spec), "--executor", "debug", "--results", str(root), "--no-report"]) == 0
        err = capsys.readouterr().err
        assert "0 finished, 0 already done (skipped), 0 failed" in err and "1 running elsewhere" in err
        assert files_of(folder.path) == before
    finally:
        kill(holder)


def test_force_respects_a_held_lease_and_a_done_run_is_never_restarted(tmp_path, tiny_base, capsys):
    config = identified(resolve(small(tiny_base)))  # as a launch of the spec below makes it
    rid = run_id(config)
    root = tmp_path / "results"
    assert run_one(config, "s", str(root), {"device": "cpu", "threads": 1})["status"] == "done"
    folder = RunFolder(root, "s", rid)
    again = run_one(config, "s", str(root), {"device": "cpu", "threads": 1})
    assert again["status"] == "done" and again["already_done"]  # found done: not run a second time
    done = files_of(folder.path)
    holder = hold_lease(folder.path)
    try:
        spec = write_spec(tmp_path, small(tiny_base), name="s")
        assert main(["run", str(spec), "--executor", "debug", "--force", "--results", str(root), "--no-report"]) == 0
        assert "1 running elsewhere" in capsys.readouterr().err
        assert {k: v for k, v in files_of(folder.path).items() if not k.startswith("lease")} == \
            {k: v for k, v in done.items() if not k.startswith("lease")}
    finally:
        kill(holder)


def test_the_lease_of_a_dead_holder_is_taken_over(tmp_path, tiny_base):
    config = resolve(small(tiny_base))
    rid = run_id(config)
    root = tmp_path / "results"
    folder = RunFolder(root, "s", rid)
    holder = hold_lease(folder.path)
    kill(holder)  # SIGKILL: the OS drops its flock; its lease.json stays behind, stale
    stale = leases.read_lease(folder.path)
    assert stale["pid"] == holder.pid and leases.holder(folder.path) is None
    [status] = study_status(root / "s", [rid])
    assert status.state != "running"

    lease = leases.Lease(folder.path, kind="test")
    assert lease.acquire() is None
    try:
        assert leases.read_lease(folder.path)["pid"] == os.getpid()  # the stale record replaced
        assert leases.holder(folder.path)["pid"] == os.getpid()
    finally:
        lease.release()
    assert leases.holder(folder.path) is None and not (folder.path / "lease.json").exists()

    holder = hold_lease(folder.path)
    kill(holder)
    out = run_one(config, "s", str(root), {"device": "cpu", "threads": 1})
    assert out["status"] == "done" and folder.is_done()
    assert not (folder.path / "lease.json").exists()  # released at the end


def test_heartbeat_and_phase_are_kept_fresh(tmp_path):
    lease = leases.Lease(tmp_path / "run", kind="local", heartbeat_s=0.1)
    assert lease.acquire() is None
    try:
        first = leases.read_lease(tmp_path / "run")["heartbeat"]
        time.sleep(0.5)
        lease.set_phase("finetune")
        record = leases.read_lease(tmp_path / "run")
        assert record["heartbeat"] > first and record["phase"] == "finetune" and record["kind"] == "local"
        assert record["host"] == platform.node() and record["pid"] == os.getpid()
        # a second lease object, even in this same process, does not get it
        other = leases.Lease(tmp_path / "run")
        assert other.acquire(wait_s=0.2)["pid"] == os.getpid()
    finally:
        lease.release()


def test_a_submission_in_progress_reads_as_pending(tmp_path):
    folder = RunFolder(tmp_path, "s", "abc")
    folder.path.mkdir(parents=True)
    write_submitting(folder)
    [status] = study_status(tmp_path / "s")
    assert status.state == "pending" and status.queued and f"pid {os.getpid()}" in status.detail
    clear_submitting(folder)
    assert not (folder.path / "job.json").exists()
    # a record left by a launch that died mid-submission is no longer a queued run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder.path / "job.json").write_text(json.dumps({"job_id": None, "executor": "slurm", "state": "submitting",
                                                      "host": platform.node(), "pid": dead.pid,
                                                      "submitted": time.time()}))
    [status] = study_status(tmp_path / "s")
    assert status.state == "to do"


def test_a_held_run_the_spec_no_longer_has_is_not_this_launchs_business(tmp_path):
    """A grid edited while one of its old runs still runs: that run's folder is not 'running elsewhere'
    for the new launch (only the runs it asks about are)."""
    from bench.launch.status import busy_runs
    old, new = RunFolder(tmp_path, "s", "0123456789ab"), RunFolder(tmp_path, "s", "ba9876543210")
    lease = leases.Lease(old.path, kind="test")
    assert lease.acquire() is None
    try:
        assert set(busy_runs(tmp_path / "s", [old.run_id, new.run_id])) == {old.run_id}
        assert busy_runs(tmp_path / "s", [new.run_id]) == {}
    finally:
        lease.release()
