"""The SLURM path against a real slurmctld (tests/slurm_fixture.py starts one when it can).

A job array ends with every result; a failing run is marked failed while its siblings finish;
a run sent SIGUSR2 mid-training is requeued, resumes from its checkpoint and ends with exactly
the numbers of an uninterrupted run; `status` reports each state. SLURM holds a requeued job
for about two minutes before it starts again, so the requeue test takes about three.
"""
import json
import subprocess
import time

import pytest
import yaml

from bench.cli import main
from bench.data import identity_digest
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.launch.job import run_one
from bench.launch.status import study_status
from bench.launch.store import RunFolder

pytestmark = pytest.mark.slow


def write_spec(tmp_path, name, base, grid):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "grid": grid}, sort_keys=False))
    return path


def slurm_flags(cluster, tmp_path):
    return ["--executor", "slurm", "--partition", cluster.partition, "--timeout-min", "10", "--cpus-per-task", "1",
            "--parallel", "2", "--results", str(tmp_path / "results")]


def wait_until(predicate, timeout, poll=1.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_job_array_finishes_every_run_and_isolates_a_failure(slurm_cluster, tmp_path, tiny_base, capsys):
    import pickle
    (tmp_path / "none" / "cifar-10-batches-py").mkdir(parents=True)  # whole enough for plan's check, not to load
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / "none" / "cifar-10-batches-py" / name).write_bytes(pickle.dumps({b"pixels": []}, protocol=2))
    spec = write_spec(tmp_path, "array", tiny_base,
                      {"data.name": ["synthetic", "cifar10"], "masking.strategy": ["random", "grid"]})
    code = main(["run", str(spec), *slurm_flags(slurm_cluster, tmp_path), "--data-root", str(tmp_path / "none"),
                 "--reports", str(tmp_path / "reports")])
    assert code == 1  # two runs failed: CIFAR-10's pickles hold no images
    err = capsys.readouterr().err
    assert "2 finished" in err and "2 failed" in err
    states = {s.run_id: s for s in study_status(tmp_path / "results" / "array")}
    assert sorted(s.state for s in states.values()) == ["done", "done", "failed", "failed"]
    for s in states.values():
        folder = RunFolder(tmp_path / "results", "array", s.run_id)
        job = json.loads((folder.path / "job.json").read_text())
        assert job["executor"] == "slurm" and "_" in job["job_id"]  # an array task
        if s.state == "failed":
            assert "cifar10: holds" in s.detail and "Traceback" in folder.error_path.read_text()
        else:
            assert json.loads(folder.result_path.read_text())["slurm_job_id"]
    assert (tmp_path / "reports" / "array" / "table.md").exists()

    main(["status", "array", "--results", str(tmp_path / "results")])
    out = capsys.readouterr().out
    assert "2 done" in out and "2 failed" in out and "cifar10: holds" in out


def test_preempted_job_is_requeued_and_resumes_exactly(slurm_cluster, tmp_path, tiny_base, capsys):
    tiny_base["pretrain"]["epochs"] = 60  # long enough to be caught mid-training
    tiny_base["data"]["train_limit"] = 1024
    config = resolve(tiny_base)
    config["data"]["identity"] = identity_digest(config["data"], None)  # as the launch of the spec below
    rid = run_id(config)
    # the reference: the same config, never interrupted, with the job's single thread
    run_one(config, "ref", str(tmp_path / "reference"), {"device": "cpu", "threads": 1})

    spec = write_spec(tmp_path, "preempt", tiny_base, {})
    assert main(["run", str(spec), *slurm_flags(slurm_cluster, tmp_path), "--no-wait"]) == 0
    folder = RunFolder(tmp_path / "results", "preempt", rid)
    job_id = json.loads((folder.path / "job.json").read_text())["job_id"]

    def pretrain_epochs():
        return sum(r.get("phase") == "pretrain" for r in folder.read_metrics())
    wait_until(lambda: pretrain_epochs() >= 3, 120, 0.2, "three pre-training epochs")
    assert study_status(tmp_path / "results" / "preempt")[0].state == "running"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)

    wait_until(folder.checkpoint_path.exists, 60, 0.2, "the checkpoint")
    wait_until(lambda: study_status(tmp_path / "results" / "preempt")[0].state == "pending", 60, 1,
               "the requeued job to be pending")
    capsys.readouterr()
    main(["status", "preempt", "--results", str(tmp_path / "results")])
    assert "pending" in capsys.readouterr().out
    # relaunching while it waits in the queue submits nothing new
    assert main(["run", str(spec), *slurm_flags(slurm_cluster, tmp_path), "--no-wait"]) == 0
    assert "1 still queued or running" in capsys.readouterr().err
    assert json.loads((folder.path / "job.json").read_text())["job_id"] == job_id

    wait_until(folder.is_done, 400, 2, "the requeued run to finish")
    status = study_status(tmp_path / "results" / "preempt")[0]
    assert status.state == "done" and status.resumed == 1

    def numbers(f):
        result = json.loads(f.result_path.read_text())
        return ([(r["phase"], r["epoch"], r["loss"]) for r in f.read_metrics()],
                result["finetune_top1"], result["linear_probe_top1"])
    assert numbers(folder) == numbers(RunFolder(tmp_path / "reference", "ref", rid))
    assert not folder.checkpoint_path.exists()


def test_cancel_stops_a_study(slurm_cluster, tmp_path, tiny_base, capsys):
    tiny_base["pretrain"]["epochs"] = 500
    spec = write_spec(tmp_path, "cancel", tiny_base, {})
    assert main(["run", str(spec), *slurm_flags(slurm_cluster, tmp_path), "--no-wait"]) == 0
    study_dir = tmp_path / "results" / "cancel"
    wait_until(lambda: study_status(study_dir)[0].state in ("running", "pending"), 30, 0.5, "the job")
    assert main(["cancel", "cancel", "--results", str(tmp_path / "results")]) == 0
    assert "cancelled 1 job" in capsys.readouterr().out
    wait_until(lambda: study_status(study_dir)[0].state not in ("running", "pending"), 60, 1, "the cancel")


def test_ddp_two_processes_follow_the_single_process_loss_curve(slurm_cluster, tmp_path, tiny_base):
    tiny_base["pretrain"]["epochs"] = 3
    config = resolve(tiny_base)
    config["data"]["identity"] = identity_digest(config["data"], None)  # as the launch of the spec below
    rid = run_id(config)
    run_one(config, "one", str(tmp_path / "one"), {"device": "cpu", "threads": 1})
    spec = write_spec(tmp_path, "ddp", tiny_base, {})
    flags = slurm_flags(slurm_cluster, tmp_path)
    assert main(["run", str(spec), *flags, "--tasks-per-node", "2", "--no-report"]) == 0
    folder = RunFolder(tmp_path / "results", "ddp", rid)
    assert list((tmp_path / "results" / "ddp" / ".submitit").glob("*_1_log.out"))

    def curve(f):
        return [r["loss"] for r in f.read_metrics() if r["phase"] == "pretrain"]
    single = curve(RunFolder(tmp_path / "one", "one", rid))
    assert len(curve(folder)) == len(single) == 3
    assert curve(folder) == pytest.approx(single, rel=1e-4)
