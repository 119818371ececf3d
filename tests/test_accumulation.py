"""Gradient accumulation (pretrain.accum_iter, evals.finetune.accum_iter; MAE's accum_iter): the
batch in micro-batches gives the update of the whole batch, for pre-training and fine-tuning,
and the key at 1 leaves every run id where it was."""
import copy

import pytest
import torch

from bench.core.errors import ConfigError
from bench.data import create_dataset
from bench.methods.mae import MaskedAutoencoderViT
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.targets import create_target
from bench.train import evals
from bench.train.pretrain import SplitStep, pretrain
from bench import masking
from conftest import TINY_BASE

DIMS = dict(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=2,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("parts, accum, loss_on_all", [(1, 4, False), (2, 3, False), (1, 2, True)])
def test_accumulated_step_gives_the_batchs_loss_and_gradients(parts, accum, loss_on_all):
    torch.manual_seed(0)
    whole = MaskedAutoencoderViT(**DIMS)
    micro = copy.deepcopy(whole)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 3, 16, 16, generator=gen)  # 10 rows: uneven micro-batches, weighted by their share
    mask = masking.generate("random", 10, (4, 4), 0.75, {}, gen)
    target = create_target("norm_pixel")
    loss = SplitStep(whole, 1, loss_on_all=loss_on_all)(x, mask, target)
    step = SplitStep(micro, parts, loss_on_all=loss_on_all, accum=accum)
    micro_loss = step(x, mask, target)
    step.close()
    assert torch.allclose(micro_loss, loss, rtol=1e-6, atol=1e-7)
    expected, got = _grads(whole), _grads(micro)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(expected[name], got[name], rtol=1e-4, atol=1e-6), name
    micro_again = SplitStep(micro, parts, loss_on_all=loss_on_all, accum=accum)
    micro_again(x, mask, target)  # a second step replaces the gradient, it does not add to the last one
    micro_again.close()
    assert all(torch.allclose(got[n], p.grad, rtol=1e-6, atol=1e-8) for n, p in micro.named_parameters()
               if p.grad is not None)


def _tiny(**overrides):
    cfg = copy.deepcopy(TINY_BASE)
    cfg["pretrain"].update(overrides.get("pretrain", {}))
    cfg["evals"]["finetune"].update(overrides.get("finetune", {}))
    return resolve(cfg)


def test_pretraining_with_accumulation_makes_the_same_updates():
    cfg, accumulated = _tiny(), _tiny(pretrain={"accum_iter": 4})
    train = create_dataset(cfg["data"], "train")
    model, info = pretrain(cfg, train, torch.device("cpu"))
    model_acc, info_acc = pretrain(accumulated, train, torch.device("cpu"))
    assert info_acc["final_loss"] == pytest.approx(info["final_loss"], rel=1e-4)
    for (name, a), (_, b) in zip(model.state_dict().items(), model_acc.state_dict().items()):
        # 8 AdamW steps of lr 7.5e-4 from the same batches: weights move ~6e-3, and agree to 1e-4 (Adam
        # turns rounding noise into steps where the true gradient is 0, e.g. the attention keys' bias)
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), name


def test_finetuning_with_accumulation_makes_the_same_updates():
    # drop path on: each sample's draw is made for the whole batch and cut with the micro-batches
    cfg, accumulated = _tiny(finetune={"drop_path": 0.2}), _tiny(finetune={"drop_path": 0.2, "accum_iter": 4})
    train, test = create_dataset(cfg["data"], "train"), create_dataset(cfg["data"], "test")
    torch.manual_seed(0)
    state = MaskedAutoencoderViT(**{**DIMS, "in_chans": train.channels}).encoder_state_dict()
    result, tuned = evals.finetune(cfg, state, train, test, "cpu", return_model=True)
    result_acc, tuned_acc = evals.finetune(accumulated, state, train, test, "cpu", return_model=True)
    for (name, a), (_, b) in zip(tuned.state_dict().items(), tuned_acc.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5), name
    assert abs(result_acc["top1"] - result["top1"]) <= 100 / len(test)  # at most one test image apart


def test_accum_iter_is_checked_and_leaves_old_run_ids_alone():
    base = _tiny()
    assert run_id(base) == run_id(_tiny(pretrain={"accum_iter": 1}, finetune={"accum_iter": 1}))
    assert run_id(base) != run_id(_tiny(pretrain={"accum_iter": 2}))
    assert run_id(base) != run_id(_tiny(finetune={"accum_iter": 2}))
    with pytest.raises(ConfigError, match=r"pretrain.accum_iter: 3 does not divide pretrain.batch_size 128"):
        _tiny(pretrain={"accum_iter": 3})
    with pytest.raises(ConfigError, match=r"evals.finetune.accum_iter: 0 is"):
        _tiny(finetune={"accum_iter": 0})
