"""The shared cache: runs that differ only in their evals pre-train once; entries are built once."""
import json
import multiprocessing
import time

import torch

from bench.core import cache
from bench.study.config import resolve
from bench.launch.job import run_one
from bench.launch.store import RunFolder


def test_runs_that_differ_only_in_evals_share_one_pretraining(tmp_path, tiny_base):
    first = resolve(tiny_base)
    tiny_base["evals"]["finetune"]["blocks"] = 1
    second = resolve(tiny_base)
    a = run_one(first, "s", str(tmp_path), {"executor": "debug"})
    b = run_one(second, "s", str(tmp_path), {"executor": "debug"})
    assert a["run_id"] != b["run_id"]
    assert b["result"]["pretrained_by"] == a["run_id"] == a["result"]["pretrained_by"]
    assert b["result"]["pretrain_final_loss"] == a["result"]["pretrain_final_loss"]
    rows = [json.loads(line) for line in RunFolder(tmp_path, "s", b["run_id"]).metrics_path.open()]
    first_rows = [json.loads(line) for line in RunFolder(tmp_path, "s", a["run_id"]).metrics_path.open()]
    # the pre-training's metrics are copied, marked with the run that made them; only the evals ran again
    assert [r["loss"] for r in rows if r["phase"] == "pretrain"] == [r["loss"] for r in first_rows if r["phase"] == "pretrain"]
    assert all(r["from_run"] == a["run_id"] for r in rows if r["phase"] == "pretrain")
    assert "finetune" in [r["phase"] for r in rows]
    assert len(list((cache.cache_root(tmp_path) / "encoders").glob("*.pt"))) == 1
    # a change to anything the pre-training depends on is a new entry
    tiny_base["masking"]["ratio"] = 0.5
    c = run_one(resolve(tiny_base), "s", str(tmp_path), {"executor": "debug"})
    assert c["result"]["pretrained_by"] == c["run_id"]
    assert len(list((cache.cache_root(tmp_path) / "encoders").glob("*.pt"))) == 2


def _build_slowly(root, counter_path):
    def build():
        with open(counter_path, "a") as f:
            f.write("built\n")
        time.sleep(0.5)  # long enough that the three requests overlap
        return {"value": torch.arange(3)}
    return cache.get_or_build(root, "things", "a1", build)["value"].tolist()


def test_concurrent_requests_build_an_entry_once(tmp_path):
    counter = tmp_path / "count.txt"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(3) as pool:
        values = pool.starmap(_build_slowly, [(tmp_path / "cache", counter)] * 3)
    assert values == [[0, 1, 2]] * 3
    assert counter.read_text().count("built") == 1
    assert not list((tmp_path / "cache" / "things").glob(".*.tmp"))  # no half-written entry left


def test_a_corrupt_entry_is_set_aside_and_built_again(tmp_path):
    root = tmp_path / "cache"
    path = cache.entry_path(root, "things", "k1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 cut short")  # the start of a torch zip file, and nothing more
    (path.parent / ".k1.pt.abc123.tmp").write_bytes(b"half")  # a killed writer's temporary
    assert cache.load(path) is None  # a miss, never a crash
    warnings = []
    value = cache.get_or_build(root, "things", "k1", lambda: {"value": torch.arange(2)}, warn=warnings.append)
    assert value["value"].tolist() == [0, 1] and cache.load(path)["value"].tolist() == [0, 1]
    assert len(warnings) == 1 and "could not be read" in warnings[0] and "set aside" in warnings[0]
    assert len(list(path.parent.glob("k1.pt.corrupt-*"))) == 1 and not list(path.parent.glob(".*.tmp"))
    built = []
    cache.get_or_build(root, "things", "k1", lambda: built.append(1))  # whole now: read, not rebuilt
    assert built == []
