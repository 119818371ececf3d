"""A non-finite number is never a result; the model refuses masks it cannot gather.

Each training phase (pre-training, linear probe, fine-tune, the tokenizer's training) fails the
run with its phase, epoch and step when a loss goes NaN or infinite; under DDP a NaN on one
rank stops every rank at the same step.
"""
import math
import multiprocessing
import os

import pytest
import torch

import bench.train.evals
import bench.train.pretrain
from bench.core.errors import NonFiniteError, require_finite
from bench.data import create_dataset
from bench.launch.job import run_one
from bench.launch.store import RunFolder
from bench.methods.mae import MaskedAutoencoderViT
from bench.study.config import resolve
from bench.targets import create_target
from bench.targets.tokenizer import train_tokenizer
from bench.train import distributed


def test_require_finite_names_phase_epoch_and_step():
    require_finite(torch.tensor([1.0, 0.5]), "finetune", 1)
    with pytest.raises(NonFiniteError, match=r"^finetune loss is nan at epoch 3, step 2$"):
        require_finite(torch.tensor([1.0, 0.5, math.nan, math.inf]), "finetune", 3)


@pytest.mark.parametrize("phase, module", [("pretrain", bench.train.pretrain), ("linear_probe", bench.train.evals),
                                           ("finetune", bench.train.evals)])
def test_a_diverging_phase_fails_the_run_with_no_result(phase, module, tiny_base, tmp_path, monkeypatch):
    config = resolve(tiny_base)
    if phase == "finetune":
        config["evals"]["linear_probe"]["enabled"] = False
    lr_at = module.lr_at
    monkeypatch.setattr(module, "lr_at", lambda *a: math.inf if a[0] >= 0.5 else lr_at(*a))
    out = run_one(config, "s", str(tmp_path), {"executor": "debug"}, raise_on_failure=False)
    assert out["status"] == "failed" and "NonFiniteError" in out["error"]
    assert f"{phase} loss is nan at epoch 1, step " in out["error"]
    folder = RunFolder(tmp_path, "s", out["run_id"])
    assert not folder.is_done() and folder.error_path.exists()
    for line in folder.metrics_path.read_text().splitlines() if folder.metrics_path.exists() else []:
        assert "NaN" not in line and "Infinity" not in line


def test_tokenizer_training_on_non_finite_patches_fails():
    patches = torch.randn(600, 48)
    patches[7, 3] = math.nan
    params = {"vocab_size": 8, "hidden": 16, "code_dim": 4, "epochs": 1, "batch_size": 64, "lr": 1e-3,
              "fit_patches": 600, "seed": 0}
    with pytest.raises(NonFiniteError, match="dvae_token tokenizer training loss is nan at epoch 1, step"):
        train_tokenizer(patches, params)


def test_the_model_rejects_masks_with_unequal_counts():
    model = MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=1, num_heads=2,
                                 decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :12], mask[1, :11] = True, True
    with pytest.raises(ValueError, match=r"unequal counts per row \(11\.\.12 masked of 16\)"):
        model(x, mask, create_target("norm_pixel"))
    mask[1, 11] = True
    loss, _ = model(x, mask, create_target("norm_pixel"))
    assert torch.isfinite(loss)


def _ddp_rank(rank: int, init_file: str, tiny_base: dict, queue) -> None:
    """One of two gloo ranks pre-training together; rank 1's loss turns NaN at its third step."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    calls = []
    step = bench.train.pretrain.PretrainStep.__call__

    def nan_on_rank_1(self, images, lr, gen, **schedule):  # schedule: weight_decay (pretrain.weight_decay_end)
        loss = step(self, images, lr, gen, **schedule)
        calls.append(1)
        return loss * math.nan if rank == 1 and len(calls) == 3 else loss
    bench.train.pretrain.PretrainStep.__call__ = nan_on_rank_1
    config = resolve(tiny_base)
    try:
        bench.train.pretrain.pretrain(config, create_dataset(config["data"], "train"), torch.device("cpu"))
        queue.put((rank, "finished", len(calls)))
    except NonFiniteError as err:
        queue.put((rank, str(err), len(calls)))
    finally:
        distributed.shutdown()


def test_a_nan_on_one_ddp_rank_stops_every_rank(tiny_base, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_rank, args=(r, str(tmp_path / "init"), tiny_base, queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        os.kill(p.pid, 9)
    assert not alive, "a rank hung after another rank's NaN"
    outcomes = sorted(queue.get(timeout=10) for _ in procs)
    # both ranks stopped at the same step (the third) with the same message
    assert [o[2] for o in outcomes] == [3, 3]
    assert outcomes[0][1] == outcomes[1][1] and "pretrain loss is nan at epoch 1, step 2" in outcomes[0][1]
