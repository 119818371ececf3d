"""Checkpoints resume exactly: an interrupted run ends with the numbers of an uninterrupted one."""
import json
import os
import signal

import pytest

import bench.train.pretrain
from bench.train.checkpoint import Preempted
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.launch.job import run_one
from bench.launch.store import RunFolder


def losses_and_accuracy(root, config):
    folder = RunFolder(root, "s", run_id(config))
    rows = [(r["phase"], r["epoch"], r["loss"]) for r in folder.read_metrics()]
    result = json.loads(folder.result_path.read_text())
    return rows, result["finetune_top1"], result["linear_probe_top1"], result["pretrain_final_loss"]


@pytest.mark.parametrize("stop_at_mask", [2, 4, 6])  # mid-epoch, last step of an epoch, next epoch
def test_preempted_run_resumes_to_the_same_numbers(tmp_path, tiny_base, monkeypatch, stop_at_mask):
    tiny_base["pretrain"]["epochs"] = 3  # 512 images / batch 128: 4 steps an epoch
    config = resolve(tiny_base)
    launch = {"device": "cpu", "threads": 1}
    run_one(config, "s", str(tmp_path / "plain"), launch)
    expected = losses_and_accuracy(tmp_path / "plain", config)

    calls = {"n": 0}
    generate = bench.train.pretrain.masking.generate

    def generate_then_signal(*args, **kwargs):  # SIGUSR2 arrives during a training step
        calls["n"] += 1
        if calls["n"] == stop_at_mask:
            os.kill(os.getpid(), signal.SIGUSR2)
        return generate(*args, **kwargs)

    monkeypatch.setattr(bench.train.pretrain.masking, "generate", generate_then_signal)
    previous = signal.getsignal(signal.SIGUSR2)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # no submitit here: nothing to hand over to
    try:
        with pytest.raises(Preempted):
            run_one(config, "s", str(tmp_path / "cut"), launch, catch_preemption=True)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    folder = RunFolder(tmp_path / "cut", "s", run_id(config))
    assert folder.checkpoint_path.exists() and not folder.is_done()
    monkeypatch.setattr(bench.train.pretrain.masking, "generate", generate)

    run_one(config, "s", str(tmp_path / "cut"), launch)  # the requeued job
    assert losses_and_accuracy(tmp_path / "cut", config) == expected
    assert not folder.checkpoint_path.exists()  # a finished run keeps no checkpoint
    assert "resumed" in (folder.path / "resumed.log").read_text()


def test_periodic_checkpoints_and_resume_after_a_kill(tmp_path, tiny_base):
    tiny_base["pretrain"]["epochs"] = 3
    config = resolve(tiny_base)
    launch = {"device": "cpu", "threads": 1}
    run_one(config, "s", str(tmp_path / "plain"), launch)
    expected = losses_and_accuracy(tmp_path / "plain", config)

    # a run killed after its epoch-2 checkpoint: simulate by running 2 epochs' worth, then resuming
    root = tmp_path / "killed"
    folder = RunFolder(root, "s", run_id(config))
    seen = []

    class Killed(Exception):
        pass

    def log_then_die(row):
        folder.log_metrics(row)
        seen.append(row)
        if row["phase"] == "pretrain" and row["epoch"] == 2 and folder.checkpoint_path.exists():
            raise Killed

    folder.start(config)
    from bench.train.checkpoint import Checkpointer
    from bench.data import create_dataset
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a run launched one thread each; restored for the tests after this one
    try:
        ckpt = Checkpointer(folder.checkpoint_path, every_epochs=1)
        train = create_dataset(config["data"], "train")
        with pytest.raises(Killed):
            bench.train.pretrain.pretrain(config, train, torch.device("cpu"), log_then_die, ckpt)
        # the epoch-2 line was logged before its checkpoint: resume keeps only what the checkpoint covers
        assert torch.load(folder.checkpoint_path, weights_only=False)["epoch"] == 1
        run_one(config, "s", str(root), launch)
    finally:
        torch.set_num_threads(threads)
    assert losses_and_accuracy(root, config) == expected
