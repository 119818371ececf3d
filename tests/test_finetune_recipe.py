"""The rest of MAE's fine-tune recipe (evals.finetune.mixup, cutmix, rand_augment, reprob;
bench.train.finetune_recipe): off, the fine-tune computes what it computed before the keys;
on, mixed soft targets with SoftTargetCrossEntropy, RandAugment per sample, erasing at about
reprob, all deterministic from (seed, epoch, step); bad values are one-line ConfigErrors."""
import copy
import random

import numpy as np
import pytest
import torch
from timm.loss import SoftTargetCrossEntropy

from bench.core.errors import ConfigError
from bench.data import create_dataset
from bench.methods.mae import MaskedAutoencoderViT
from bench.study.config import resolve
from bench.study.run_ids import hashed_part, run_id
from bench.train import evals, features, finetune_recipe
from bench.train.finetune_recipe import FinetuneRecipe
from conftest import TINY_BASE
from test_videomae import clip_set, synthetic_is_video, video_cfg  # noqa: F401  (a fixture)

KEYS = ("mixup", "cutmix", "rand_augment", "reprob")
DEFAULTS = {"mixup": 0.0, "cutmix": 0.0, "rand_augment": None, "reprob": 0.0}
MAE = {"mixup": 0.8, "cutmix": 1.0, "rand_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25}  # MAE Table 9


def _cfg(**finetune) -> dict:
    cfg = copy.deepcopy(TINY_BASE)
    cfg["evals"]["finetune"].update({"augmentation": "crop_rand", "drop_path": 0.1, **finetune})
    return resolve(cfg)


@pytest.fixture(scope="module")
def data():
    cfg = _cfg()
    train, test = create_dataset(cfg["data"], "train"), create_dataset(cfg["data"], "test")
    torch.manual_seed(0)
    state = MaskedAutoencoderViT(img_size=16, patch_size=4, in_chans=train.channels, embed_dim=32, depth=2,
                                 num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                                 decoder_num_heads=2).encoder_state_dict()
    return train, test, state


def _tune(cfg, data):
    train, test, state = data
    result, vit = evals.finetune(cfg, state, train, test, "cpu", return_model=True)
    return result["top1"], vit.state_dict()


def _same(a, b) -> bool:
    return a[0] == b[0] and all(torch.equal(x, b[1][k]) for k, x in a[1].items())


def test_at_the_defaults_the_finetune_is_todays_and_never_enters_the_recipe(data, monkeypatch):
    omitted, explicit = _cfg(), _cfg(**DEFAULTS)
    assert run_id(omitted) == run_id(explicit)
    assert not any(k in hashed_part(omitted)["evals"]["finetune"] for k in KEYS)
    for accum in (1, 2):
        before = _tune(_cfg(accum_iter=accum), data)

        def untouched(*args, **kwargs):
            raise AssertionError("the recipe ran with every key at its default")
        monkeypatch.setattr(FinetuneRecipe, "__call__", untouched)
        monkeypatch.setattr(finetune_recipe, "seeded_globals", untouched)
        assert _same(before, _tune(_cfg(accum_iter=accum, **DEFAULTS), data))  # bitwise
        monkeypatch.undo()
    train = data[0]
    assert not FinetuneRecipe(_cfg(**DEFAULTS)["evals"]["finetune"], train, 16, 0).active
    assert type(FinetuneRecipe(_cfg()["evals"]["finetune"], train, 16, 0).criterion()) is torch.nn.CrossEntropyLoss


def test_mixup_and_cutmix_give_soft_targets_and_soft_target_cross_entropy(data, monkeypatch):
    train = data[0]
    ecfg = _cfg(mixup=0.8, cutmix=1.0)["evals"]["finetune"]
    recipe = FinetuneRecipe(ecfg, train, 16, 0)
    assert isinstance(recipe.criterion(), SoftTargetCrossEntropy)
    images, y = next(train.batches(128, shuffle=True, seed=1))
    for step in range(4):
        x, soft = recipe(images, y, torch.Generator().manual_seed(0), 0, step)
        assert x.shape == (128, 3, 16, 16) and soft.shape == (128, train.num_classes)
        assert torch.allclose(soft.sum(1), torch.ones(128))
        assert (soft.max(1).values < 1).all()  # mixed and smoothed: never one-hot
        above = soft > 0.1 / train.num_classes + 1e-6  # above label smoothing's floor: only the sample's
        partners = torch.zeros_like(above).scatter_(1, y[:, None], True).scatter_(1, y.flip(0)[:, None], True)
        assert above.any(1).all() and not (above & ~partners).any()  # class and its partner's (the reverse)
    seen = []
    original = SoftTargetCrossEntropy.forward
    monkeypatch.setattr(SoftTargetCrossEntropy, "forward",
                        lambda self, x, target: seen.append(target) or original(self, x, target))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one part per micro-batch (with 2 threads each is split in 2: bench.train.parts)
    try:
        top1, _ = _tune(_cfg(mixup=0.8, cutmix=1.0, accum_iter=2), data)
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 2 * (512 // 128) and all(t.shape == (64, train.num_classes) for t in seen)  # micro-batches
    assert 0 <= top1 <= 100


def test_mixup_is_applied_to_the_whole_batch_before_the_micro_batches(data):
    # drop path off: its draws are per forward, so micro-batches would draw other ones
    one = _tune(_cfg(drop_path=0.0, **MAE), data)
    four = _tune(_cfg(drop_path=0.0, accum_iter=4, **MAE), data)
    for name, a in one[1].items():
        assert torch.allclose(a, four[1][name], rtol=1e-3, atol=1e-5), name


def test_rand_augment_differs_per_sample_and_repeats_for_the_same_step(data):
    train = data[0]
    recipe = FinetuneRecipe(_cfg(augmentation="none", rand_augment="rand-m9-mstd0.5-inc1")["evals"]["finetune"],
                            train, 16, 0)
    images, y = next(train.batches(64, shuffle=False))
    images = images[:1].expand(64, -1, -1, -1).contiguous()  # one image 64 times
    plain = features.eval_inputs(images, "none", 16, train, None)
    x, same_y = recipe(images, y, None, 0, 3)
    assert torch.equal(same_y, y)
    changed = (x - plain).flatten(1).abs().amax(1) > 1e-3
    assert changed.sum() >= 32  # most samples changed (2 ops of p 0.5 each)...
    assert len({tuple(r.tolist()) for r in x.flatten(1).mul(1e4).round()}) >= 16  # ...each its own way
    again, _ = recipe(images, y, None, 0, 3)
    other, _ = recipe(images, y, None, 0, 4)
    later, _ = recipe(images, y, None, 1, 3)
    assert torch.equal(x, again) and not torch.equal(x, other) and not torch.equal(x, later)


def test_random_erasing_erases_about_reprob_of_the_samples(data):
    train = data[0]
    recipe = FinetuneRecipe(_cfg(augmentation="none", reprob=0.25)["evals"]["finetune"], train, 16, 0)
    images, y = next(train.batches(512, shuffle=False))
    plain = features.eval_inputs(images, "none", 16, train, None)
    erased = [(recipe(images, y, None, 0, step)[0] != plain).flatten(1).any(1).float().mean().item()
              for step in range(4)]
    assert 0.18 <= sum(erased) / 4 <= 0.32


def test_the_recipe_is_deterministic_and_leaves_the_global_rngs_alone(data):
    train = data[0]
    recipe = FinetuneRecipe(_cfg(**MAE)["evals"]["finetune"], train, 16, 0)
    images, y = next(train.batches(64, shuffle=False))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    recipe(images, y, torch.Generator().manual_seed(0), 0, 0)
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])  # drop path's stream goes on untouched
    first, second = _tune(_cfg(**MAE), data), _tune(_cfg(**MAE), data)
    assert _same(first, second)
    assert not _same(first, _tune(_cfg(), data))


def test_clips_get_the_recipe_with_one_draw_per_clip(synthetic_is_video):  # noqa: F811
    cfg = resolve(video_cfg(evals__finetune={"epochs": 1, "warmup_epochs": 0, "batch_size": 8, **MAE}))
    train = clip_set()
    recipe = FinetuneRecipe({**cfg["evals"]["finetune"], "mixup": 0.0, "cutmix": 0.0, "reprob": 0.0,
                             "augmentation": "none"}, train, 32, 0)
    still = train.images[:8, :, :1].expand(-1, -1, 4, -1, -1).contiguous()  # every frame the same
    x, _ = recipe(still, train.labels[:8], None, 0, 0)
    assert all(torch.equal(x[:, :, t], x[:, :, 0]) for t in range(4))  # the clip's ops on each frame
    erase = FinetuneRecipe({**cfg["evals"]["finetune"], "reprob": 1.0, "mixup": 0.0, "cutmix": 0.0,
                            "rand_augment": None, "augmentation": "none"}, train, 32, 0)
    plain = features.eval_inputs(still, "none", 32, train, None)
    boxes = (erase(still, train.labels[:8], None, 0, 0)[0] != plain).any(1)  # B×T×H×W
    assert all(torch.equal(boxes[:, t], boxes[:, 0]) for t in range(4)) and boxes.any()
    from bench.train.pretrain import random_init_encoder_state
    tuned = evals.finetune(cfg, random_init_encoder_state(cfg, 3), train, train, "cpu")
    assert 0 <= tuned["top1"] <= 100


@pytest.mark.parametrize("key, value, message", [
    ("mixup", -0.1, r"^evals.finetune.mixup: -0.1 is out of range; allowed: float >= 0.0$"),
    ("cutmix", "1", r"^evals.finetune.cutmix: .1. is a quoted number \(a string\); allowed: float >= 0.0"),
    ("reprob", 1.5, r"^evals.finetune.reprob: 1.5 is out of range; allowed: float 0.0 <= x <= 1.0$"),
    ("rand_augment", "rand-mnine", r"^evals.finetune.rand_augment: 'rand-mnine' is not allowed; allowed: a timm"),
    ("rand_augment", "rand-m9x", r"^evals.finetune.rand_augment: 'rand-m9x' is not allowed \(invalid literal"),
    ("rand_augment", "augmix-m5", r"^evals.finetune.rand_augment: 'augmix-m5' is not allowed; allowed: a timm"),
    ("rand_augment", "rand-q3", r"^evals.finetune.rand_augment: 'rand-q3' is not allowed \(Unknown RandAugment"),
    ("rand_augment", 9, r"^evals.finetune.rand_augment: 9 has the wrong type"),
])
def test_bad_values_are_one_line_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(**{key: value})
    assert "\n" not in str(err.value)


def test_mixup_needs_an_even_batch_and_the_keys_move_run_ids_only_when_on():
    with pytest.raises(ConfigError, match=r"^evals.finetune.cutmix: 1.0 pairs a batch .* not 127; allowed: 0"):
        _cfg(cutmix=1.0, batch_size=127)
    base = run_id(_cfg())
    assert run_id(_cfg(**DEFAULTS)) == base
    assert len({base, *(run_id(_cfg(**{k: MAE[k]})) for k in KEYS)}) == 5
