"""The evals under DDP: two gloo ranks fine-tune, probe, run k-NN, extract features and run a whole
run (bench.launch.job.run_one: pre-training, a cached encoder, a baseline, a resumed evals
checkpoint) with the numbers of one process, and only the main rank writes."""
import copy
import math
import multiprocessing as mp
import os
import shutil

import pytest
import torch

from bench.core.errors import NonFiniteError
from bench.data import create_dataset
from bench.launch import job
from bench.study.config import resolve
from bench.train import distributed, evals
from bench.train.pretrain import random_init_encoder_state
from conftest import TINY_BASE

CPU = torch.device("cpu")


def _config(**sections) -> dict:
    """TINY_BASE with drop path on (its draws are made for the whole batch and cut with each rank's
    rows) and `sections` merged in."""
    config = copy.deepcopy(TINY_BASE)
    config["evals"]["finetune"]["drop_path"] = 0.2
    for name, over in sections.items():
        config.setdefault("evals", {}).setdefault(name, {}).update(over)
    return resolve(config)


def _spawn(tmp_path, target, *args) -> None:
    """Run target(rank, init_file, *args) on two gloo ranks; both must finish, and in time."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, str(tmp_path / "init"), *args)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]


def _join(rank: int, init_file: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)


# ----------------------------------------------------------------------------- the eval functions
def _counting(seen: list):
    """evals.build_encoder, its encoders counting the images they see (forward and features) in `seen`."""
    build = evals.build_encoder

    def built(*args, **kwargs):
        vit = build(*args, **kwargs)
        features = vit.features
        vit.features = lambda x: seen.append(len(x)) or features(x)
        vit.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
        return vit
    return built


def _evals() -> dict:
    """Every eval on the random-init encoder: what one process computes, and each of two ranks
    (with the images each eval's encoder saw: a rank, half of them)."""
    base = _config()
    train, test = create_dataset(base["data"], "train"), create_dataset(base["data"], "test")
    state = random_init_encoder_state(base, train.channels)
    out, seen = {"seen": {}}, []
    real_build, evals.build_encoder = evals.build_encoder, _counting(seen)
    try:
        _run_evals(base, state, train, test, out, seen)
    finally:
        evals.build_encoder = real_build
    return out


def _run_evals(base, state, train, test, out, seen) -> None:
    finetunes = {"crop_accum": _config(finetune={"augmentation": "crop_rand", "accum_iter": 2}),
                 "recipe": _config(finetune={"mixup": 0.8, "reprob": 0.25, "rand_augment": "rand-m9-mstd0.5-inc1"})}
    for tag, config in finetunes.items():
        rows = []
        result, vit = evals.finetune(config, state, train, test, CPU, rows.append, return_model=True)
        out[f"finetune_{tag}"] = (result["top1"], vit.state_dict(), [row["loss"] for row in rows])
        out["seen"][f"finetune_{tag}"], seen[:] = sum(seen), []
    for tag, config in {"cached": _config(), "crop_rand": _config(linear_probe={"augmentation": "crop_rand"})}.items():
        rows = []
        out[f"probe_{tag}"] = (evals.linear_probe(config, state, train, test, CPU, rows.append)["top1"],
                               [row["loss"] for row in rows])
        out["seen"][f"probe_{tag}"], seen[:] = sum(seen), []
    out["knn"] = evals.knn(_config(knn={"enabled": True}), state, train, test, CPU)["top1"]
    out["seen"]["knn"], seen[:] = sum(seen), []
    vit = evals.build_encoder(base, state, train.num_classes, train.channels, "cls")
    out["features"] = evals.extract_features(vit, test, 16, 100, CPU)  # batches of 100: 3, the last short
    out["seen"]["features"] = sum(seen)


def _nan_on_rank_1(rank: int) -> str:
    """A fine-tune whose loss turns NaN on rank 1 alone, at the epoch's last step: what each rank raises."""
    criterion, calls = evals.FinetuneRecipe.criterion, []

    def poisoned(self):
        loss = criterion(self)

        def scored(logits, y):
            calls.append(1)
            value = loss(logits, y)
            return value * math.nan if rank == 1 and len(calls) == 4 else value  # 4 steps of 128 of 512
        return scored
    evals.FinetuneRecipe.criterion = poisoned
    base = _config()
    train, test = create_dataset(base["data"], "train"), create_dataset(base["data"], "test")
    try:
        evals.finetune(base, random_init_encoder_state(base, train.channels), train, test, CPU)
    except NonFiniteError as err:
        return str(err)
    finally:
        evals.FinetuneRecipe.criterion = criterion
    return "finished"


def _evals_rank(rank: int, init_file: str, out: str) -> None:
    _join(rank, init_file)
    try:
        torch.save({**_evals(), "nan": _nan_on_rank_1(rank)}, f"{out}.{rank}")
    finally:
        distributed.shutdown()


def test_two_gloo_ranks_evaluate_as_one_process(tmp_path):
    torch.set_num_threads(1)
    single = _evals()
    _spawn(tmp_path, _evals_rank, str(tmp_path / "out"))
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    assert ranks[0]["seen"] == ranks[1]["seen"] == {k: v // 2 for k, v in single["seen"].items()}  # shared out
    for got in ranks:
        for tag in ("crop_accum", "recipe"):  # 4 AdamW steps on shares of 64: the same weights to rounding
            top1, state, losses = got[f"finetune_{tag}"]
            assert top1 == pytest.approx(single[f"finetune_{tag}"][0], abs=1e-6), tag
            assert losses == pytest.approx(single[f"finetune_{tag}"][2], rel=1e-4), tag
            for name, value in single[f"finetune_{tag}"][1].items():
                assert torch.allclose(value, state[name], rtol=1e-3, atol=1e-4), (tag, name)
        for tag in ("cached", "crop_rand"):
            assert got[f"probe_{tag}"][0] == pytest.approx(single[f"probe_{tag}"][0], abs=1e-6), tag
            assert got[f"probe_{tag}"][1] == pytest.approx(single[f"probe_{tag}"][1], rel=1e-4), tag
        assert got["knn"] == single["knn"]
        feats, labels = got["features"]  # gathered in the dataset's order on every rank
        assert torch.equal(labels, single["features"][1])
        assert torch.allclose(feats, single["features"][0], rtol=0, atol=1e-6)
    # a NaN on one rank (its last step; the other rank's losses all finite) stops both, alike
    assert ranks[0]["nan"] == ranks[1]["nan"] and "finetune" in ranks[0]["nan"] and "epoch 1" in ranks[0]["nan"]


# ----------------------------------------------------------------------------- whole runs
LAUNCH = {"threads": 1}
PRETRAINED = dict(knn={"enabled": True})              # pre-trains, then every eval
CACHED_ENCODER = dict(knn={"enabled": True, "k": 5})  # the same pre-training: the encoder from the cache
RESUMED = dict(knn={"enabled": True, "k": 7})         # resumed from an evals checkpoint


def _baseline() -> dict:
    return {**_config(knn={"enabled": True}), "baseline": "random_init"}


def _record_writes(root: str, written: list) -> None:
    """Note every file opened for writing, created, renamed or removed under `root` (this process)."""
    import builtins
    import io
    root = os.path.realpath(root)

    def under(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.realpath(os.fspath(path)).startswith(root)

    real_open = builtins.open

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            written.append(str(file))
        return real_open(file, mode, *args, **kwargs)
    builtins.open = io.open = open_
    for name in ("open", "replace", "rename", "unlink", "mkdir", "rmdir"):
        def wrapped(path, *args, _real=getattr(os, name), _name=name, **kwargs):
            writes = _name != "open" or (args[0] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writes and under(path):
                written.append(str(path))
            return _real(path, *args, **kwargs)
        setattr(os, name, wrapped)


def _runs_rank(rank: int, init_file: str, root: str, out: str) -> None:
    _join(rank, init_file)
    written = []
    if rank == 1:
        _record_writes(root, written)
    try:
        outcomes = [job.run_one(_config(**PRETRAINED), "s", root, LAUNCH),
                    job.run_one(_config(**CACHED_ENCODER), "s", root, LAUNCH),
                    job.run_one(_baseline(), "s", root, LAUNCH),
                    job.run_one(_baseline(), "s2", root, LAUNCH),  # the same baseline: from the cache
                    job.run_one(_config(**RESUMED), "s3", root, LAUNCH)]
        torch.save({"outcomes": outcomes, "written": written}, f"{out}.{rank}")
    finally:
        distributed.shutdown()


def _top1s(outcome: dict) -> list:
    return [outcome["result"][key] for key in ("finetune_top1", "linear_probe_top1", "knn_top1")]


def test_two_gloo_ranks_run_as_one_process_and_only_the_main_writes(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    single, ddp = str(tmp_path / "single"), str(tmp_path / "ddp")
    expected = [job.run_one(_config(**PRETRAINED), "s", single, LAUNCH),
                job.run_one(_config(**CACHED_ENCODER), "s", single, LAUNCH),
                job.run_one(_baseline(), "s", single, LAUNCH)]
    # a run whose fine-tune failed after its pre-training: its checkpoint holds the encoder ("evals" phase)
    real_eval = job.create_eval
    with monkeypatch.context() as patch:
        patch.setattr(job, "create_eval", lambda name: (lambda *a: 1 / 0) if name == "finetune" else real_eval(name))
        failed = job.run_one(_config(**RESUMED), "s3", single, {**LAUNCH, "checkpoint_every": 1}, False)
    assert failed["status"] == "failed" and failed["phase"] == "finetune"
    folder = job.RunFolder(single, "s3", failed["run_id"])
    assert torch.load(folder.checkpoint_path, weights_only=False)["phase"] == "evals"
    shutil.copytree(folder.path, job.RunFolder(ddp, "s3", failed["run_id"]).path)
    expected.append(job.run_one(_config(**RESUMED), "s3", single, LAUNCH))  # resumed in one process

    _spawn(tmp_path, _runs_rank, ddp, str(tmp_path / "out"))
    main, worker = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(2)]
    outcomes = main["outcomes"]
    assert [o["status"] for o in outcomes] == ["done"] * 5
    assert outcomes[1]["result"]["pretrained_by"] == outcomes[0]["run_id"]  # the encoder came from the cache
    assert outcomes[0]["result"]["pretrain_final_loss"] == pytest.approx(
        expected[0]["result"]["pretrain_final_loss"], rel=1e-4)
    for got, want in zip([outcomes[0], outcomes[1], outcomes[2], outcomes[4]], expected[:3] + expected[3:]):
        assert _top1s(got) == pytest.approx(_top1s(want), abs=1e-6), got["run_id"]
    assert _top1s(outcomes[3]) == _top1s(outcomes[2])  # the baseline again: its cached evals
    assert [o["status"] for o in worker["outcomes"]] == ["done"] * 5 and "result" not in worker["outcomes"][0]
    assert worker["written"] == []  # the worker wrote nothing: no metrics, result, checkpoint or cache entry
    assert not job.RunFolder(ddp, "s3", failed["run_id"]).checkpoint_path.exists()  # done: the checkpoint removed
