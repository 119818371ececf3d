"""Faults lose nothing: a corrupt checkpoint or cache entry is set aside and recomputed, a
killed writer's temporaries are cleaned, every failure leaves error.txt with its phase, and a
results folder that refuses writes (read-only, full) stops a launch with one line and exit
status 2, earlier results untouched.

The read-only and full folders are real: a read-only bind mount and a size-limited tmpfs
(tests run as root, for whom chmod stops nothing). Without the right to mount, those tests skip.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import main
from bench.core import cache
from bench.launch.job import pretrain_config, run_one
from bench.launch.store import RunFolder
from bench.study.config import resolve
from bench.study.run_ids import run_id

LAUNCH = {"device": "cpu", "threads": 1}


def small(tiny_base):
    tiny_base["data"] = {"name": "synthetic", "train_limit": 64, "test_limit": 32, "img_size": 16}
    return tiny_base


def numbers(root, study, config):
    """What a run computed: every metrics line's (phase, epoch, loss) and the result's accuracies."""
    folder = RunFolder(root, study, run_id(config))
    result = json.loads(folder.result_path.read_text())
    return ([(r["phase"], r["epoch"], r["loss"]) for r in folder.read_metrics()],
            result["finetune_top1"], result["linear_probe_top1"], result["pretrain_final_loss"])


def truncated_checkpoint(path):
    torch.save({"phase": "pretrain", "model": {"w": torch.randn(64, 64)}, "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "garbage": lambda p: p.write_bytes(b"\x00not a checkpoint at all" * 10),
    "truncated": truncated_checkpoint,
    "empty": lambda p: p.write_bytes(b""),
    "foreign": lambda p: torch.save({"phase": "pretrain", "epoch": 1}, p),  # loads, but lacks what a resume needs
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_set_aside_and_the_run_starts_again(tmp_path, tiny_base, corruption):
    config = resolve(small(tiny_base))
    run_one(config, "s", str(tmp_path / "clean"), LAUNCH)
    root = tmp_path / "faulty"
    folder = RunFolder(root, "s", run_id(config))
    folder.start(config)
    folder.log_metrics({"phase": "pretrain", "epoch": 1, "loss": 9.0})
    CORRUPTIONS[corruption](folder.checkpoint_path)
    orphan = folder.path / ".checkpoint.pt.k1l2m3.tmp"  # left by a writer killed mid-write
    orphan.write_bytes(b"half")

    out = run_one(config, "s", str(root), {**LAUNCH, "checkpoint_every": 1})
    assert out["status"] == "done"
    assert numbers(root, "s", config) == numbers(tmp_path / "clean", "s", config)  # as a clean run
    [aside] = folder.path.glob("checkpoint.pt.corrupt-*")
    warnings = folder.warnings_path.read_text()
    assert f"set aside as {aside.name}" in warnings and "starting again from scratch" in warnings
    assert "removed temporary files" in warnings and not orphan.exists()
    assert not folder.checkpoint_path.exists() and not folder.error_path.exists()


def test_a_corrupt_cache_entry_is_recomputed(tmp_path, tiny_base):
    first = resolve(small(tiny_base))
    tiny_base["evals"]["finetune"]["blocks"] = 1  # shares the first's pre-training through the cache
    second = resolve(tiny_base)
    root = tmp_path / "results"
    a = run_one(first, "s", str(root), LAUNCH)
    entry = cache.entry_path(cache.cache_root(root), "encoders", run_id(pretrain_config(first)))
    entry.write_bytes(entry.read_bytes()[:1000])  # cut short
    (entry.parent / f".{entry.name}.x9y8.tmp").write_bytes(b"half")  # a killed writer's temporary

    b = run_one(second, "s", str(root), LAUNCH)
    assert b["status"] == "done"
    assert b["result"]["pretrained_by"] == b["run_id"]  # pre-trained again, not read from the bad entry
    assert b["result"]["pretrain_final_loss"] == a["result"]["pretrain_final_loss"]
    assert list(entry.parent.glob(f"{entry.name}.corrupt-*")) and not list(entry.parent.glob(".*.tmp"))
    assert cache.load(entry)["run_id"] == b["run_id"]  # the rebuilt entry is whole
    assert "could not be read" in RunFolder(root, "s", b["run_id"]).warnings_path.read_text()


def test_every_failure_leaves_error_txt_with_its_phase(tmp_path, tiny_base):
    tiny_base = small(tiny_base)
    tiny_base["data"]["name"] = "cifar10"  # not on this machine: fails while loading its data
    config = resolve(tiny_base)
    out = run_one(config, "s", str(tmp_path), {**LAUNCH, "data_root": str(tmp_path / "none")},
                  raise_on_failure=False)
    assert out["status"] == "failed" and out["phase"] == "setup"
    text = RunFolder(tmp_path, "s", out["run_id"]).error_path.read_text()
    assert text.startswith("phase: setup\n") and "Traceback" in text and "cifar10" in text.splitlines()[-1]


# -- results folders that refuse writes ------------------------------------------------------------

def _mount_works(tmp_path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                      capture_output=True).returncode:
        return False
    subprocess.run(["umount", str(probe)], check=True)
    return True


@pytest.fixture
def mount(tmp_path):
    """mount(args...) for this test; every mount is undone at its end."""
    if not _mount_works(tmp_path):
        pytest.skip("cannot mount here (needs root and mount); read-only/full folders untested")
    done = []

    def run(*args, target):
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        done.append(target)
    yield run
    for target in reversed(done):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def study_spec(tmp_path, base, seeds):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base, "seeds": list(seeds)}, sort_keys=False))
    return path


def run_cli(spec, results, tmp_path, capsys):
    capsys.readouterr()
    code = main(["run", str(spec), "--executor", "debug", "--threads", "1", "--results", str(results),
                 "--reports", str(tmp_path / "reports")])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith("mimbench: error:")], err


def earlier_results(tmp_path, tiny_base, capsys, results):
    """A study with one finished run; the spec then asks for a second."""
    base = small(tiny_base)
    assert run_cli(study_spec(tmp_path, base, [0]), results, tmp_path, capsys)[0] == 0
    return study_spec(tmp_path, base, [0, 1]), {p.name: files_of(p) for p in (results / "s").glob("*/")
                                                  if (p / "result.json").exists()}


def test_a_read_only_results_folder_stops_with_one_line(tmp_path, tiny_base, capsys, mount):
    results = tmp_path / "results"
    spec, before = earlier_results(tmp_path, tiny_base, capsys, results)
    mount("--bind", str(results), target=results)
    mount("-o", "remount,bind,ro", target=results)
    code, errors, err = run_cli(spec, results, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and f"{results / 's'}: cannot write (Read-only file system)" in errors[0]
    assert {p.name: files_of(p) for p in (results / "s").glob("*/") if (p / "result.json").exists()} == before


@pytest.mark.parametrize("free_kb", [0, 48])  # full before anything is written; full once the run writes
def test_a_full_results_folder_stops_with_one_line(tmp_path, tiny_base, capsys, mount, free_kb):
    staging = tmp_path / "staging"
    spec, before = earlier_results(tmp_path, tiny_base, capsys, staging)
    results = tmp_path / "results"
    results.mkdir()
    mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", target=results)
    shutil.copytree(staging / "s", results / "s", dirs_exist_ok=True)
    filler = results / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the folder to the last block, then give back free_kb
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - free_kb * 1024))
    code, errors, err = run_cli(spec, results, tmp_path, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert len(errors) == 1 and ": cannot write (No space left on device)" in errors[0], err
    assert str(results / "s") in errors[0]
    assert {p.name: files_of(p) for p in (results / "s").glob("*/") if (p / "result.json").exists()} == before
