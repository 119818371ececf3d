"""BEiT and SimMIM: the encoder with [M] over all patches, the heads, the losses (masked or all
positions, L1), the recipe keys (drop path, gradient clipping) and both small profiles end to end."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import main
from bench.core.errors import ConfigError
from bench.methods import create_method
from bench.methods.masked_vit import MaskedViT
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.targets import create_target
from bench.targets.pixels import with_loss
from bench.train.pretrain import SplitStep
from model_helpers import mask_of

REPO = Path(__file__).resolve().parents[1]
SMALL = {"data": {"name": "synthetic", "img_size": 16, "train_limit": 128, "test_limit": 64},
         "model": {"embed_dim": 32, "depth": 2, "num_heads": 2}}


def config(method, **sections):
    partial = {"method": method, **{k: dict(v) for k, v in SMALL.items()}}
    for key, value in sections.items():
        partial.setdefault(key, {}).update(value)
    return resolve(partial)


class FixedTokens:
    """A token target whose ids are given (so a test can change them at chosen positions)."""

    def __init__(self, ids, vocab):
        self.ids, self.vocab = ids, vocab

    def out_dim(self, patch_dim):
        return self.vocab

    def targets(self, imgs, model):
        return self.ids

    def loss(self, pred, target, mask):
        per_patch = torch.nn.functional.cross_entropy(pred.transpose(1, 2), target, reduction="none")
        return (per_patch * mask).sum() / mask.sum()


def build(cfg, target):
    torch.manual_seed(0)
    return create_method(cfg["method"]).build_model(cfg, 1, target)


def test_the_encoder_sees_all_patches_and_the_heads_have_the_target_width():
    cfg = config("beit", pretrain={"target": "pixel"})
    model = build(cfg, create_target("pixel"))
    imgs, mask = torch.randn(4, 1, 16, 16), mask_of()
    assert model.forward_encoder(imgs, mask).shape == (4, 1 + 16, 32)
    _, pred = model(imgs, mask, create_target("pixel"), full_pred=True)
    assert pred.shape == (4, 16, 4 * 4)  # SimMIM-style pixels: patch_size² × channels
    tokens = FixedTokens(torch.zeros(4, 16, dtype=torch.long), vocab=37)
    _, pred = build(cfg, tokens)(imgs, mask, tokens, full_pred=True)
    assert pred.shape == (4, 16, 37)  # BEiT: the vocabulary
    # a masked patch's content never reaches the encoder: only [M] and its position do
    other = imgs.clone()
    other[:, :, :4, :4] = 5.0  # patch 0
    rows = mask[:, 0]
    out_a, out_b = model.forward_encoder(imgs, mask), model.forward_encoder(other, mask)
    model.eval()
    out_a, out_b = model.forward_encoder(imgs, mask), model.forward_encoder(other, mask)
    assert torch.allclose(out_a[rows], out_b[rows]) and not torch.allclose(out_a[~rows], out_b[~rows])


@pytest.mark.parametrize("method,head", [("beit", "linear"), ("simmim", "linear"), ("simmim", "mlp"),
                                         ("simmim", "decoder")])
def test_the_loss_ignores_visible_patches_unless_it_scores_all(method, head):
    for loss_on in ("masked", "all"):
        cfg = config(method, model={"head": head}, pretrain={"target": "pixel", "loss_on": loss_on})
        mask = mask_of()
        ids = torch.randint(0, 11, (4, 16), generator=torch.Generator().manual_seed(1))
        changed = torch.where(mask, ids, (ids + 1) % 11)  # other tokens at the visible patches only
        model = build(cfg, FixedTokens(ids, 11)).eval()
        imgs = torch.randn(4, 1, 16, 16)
        base = model(imgs, mask, FixedTokens(ids, 11), full_pred=False)[0]
        moved = model(imgs, mask, FixedTokens(changed, 11), full_pred=False)[0]
        if loss_on == "masked":
            assert torch.equal(base, moved)
        else:
            assert not torch.allclose(base, moved)


def test_scoring_only_the_masked_rows_gives_the_full_predictions_loss_and_gradients():
    for head in ("linear", "mlp", "decoder"):
        cfg = config("simmim", model={"head": head}, pretrain={"target": "pixel", "loss": "l1"})
        target = with_loss(create_target("pixel"), "l1")
        model = build(cfg, target).eval()
        imgs, mask = torch.randn(4, 1, 16, 16), mask_of()
        grads = []
        for full in (True, False):
            model.zero_grad()
            loss, _ = model(imgs, mask, target, full_pred=full)
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_l1_is_the_mean_absolute_error_of_the_masked_pixels():
    target = with_loss(create_target("pixel"), "l1")
    pred, truth, mask = torch.zeros(2, 3, 4), torch.arange(2.0, 26.0).view(2, 3, 4), torch.tensor([[1, 0, 1], [0, 0, 1]]).bool()
    assert target.loss(pred, truth, mask).item() == pytest.approx(truth[mask].mean().item())
    smooth = with_loss(create_target("pixel"), "smooth_l1").loss(pred, truth, mask)
    assert smooth.item() == pytest.approx((truth[mask] - 0.5).mean().item())  # all errors > 1: |x| - 0.5


def test_split_step_weights_parts_by_scored_patches_when_the_loss_is_on_all():
    cfg = config("beit", pretrain={"target": "pixel", "loss_on": "all"}, masking={"strategy": "none"})
    target = create_target("pixel")
    model = build(cfg, target).eval()
    imgs, mask = torch.randn(6, 1, 16, 16), torch.zeros(6, 16, dtype=torch.bool)
    grads = []
    for parts in (1, 3):
        step = SplitStep(model, parts, loss_on_all=True)
        loss = step(imgs, mask, target)
        assert torch.isfinite(loss)
        grads.append([p.grad.clone() for p in step.params])
        step.close()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_recipe_keys_reach_the_model_and_the_step():
    cfg = config("beit", pretrain={"target": "pixel", "drop_path": 0.1, "clip_grad": 3.0})
    model = build(cfg, create_target("pixel"))
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in model.blocks]
    assert rates == pytest.approx([0.0, 0.1])  # rising with depth to pretrain.drop_path
    from bench.data import create_dataset
    from bench.train.pretrain import build_pretraining
    cfg = config("simmim", pretrain={"target": "pixel", "clip_grad": 1e-3, "batch_size": 32, "blr": 1e-3})
    train = create_dataset(cfg["data"], "train", None)
    _, model, step = build_pretraining(cfg, train, torch.device("cpu"))
    images, _ = next(iter(train.batches(32, shuffle=False, seed=0, epoch=0, drop_last=True,
                                        device=torch.device("cpu"))))
    step(images, 1e-3, torch.Generator().manual_seed(0))
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in step.split_step.params]))
    assert norm.item() == pytest.approx(1e-3, rel=1e-4)  # clipped to pretrain.clip_grad


@pytest.mark.parametrize("partial,key,message", [
    ({"method": "mae", "model": {"head": "linear"}}, "model.head", "'linear' is not a head of method mae; allowed: decoder"),
    ({"method": "beit", "model": {"head": "decoder"}}, "model.decoder_embed_dim",
     "is null (preset beit_vit_tiny_patch4 has no decoder) but model.head is decoder"),
    ({"method": "beit", "pretrain": {"target": "dvae_token", "loss": "l1"}}, "pretrain.loss",
     "'l1' does not apply to target dvae_token"),
    ({"method": "beit", "masking": {"strategy": "none"}}, "pretrain.loss_on", "allowed with it: all"),
    ({"method": "simmim", "model": {"mask_token_in_encoder": True}}, "model.mask_token_in_encoder",
     "always has [M] in the encoder"),
    ({"method": "beit", "model": {"preset": "mae_vit_tiny_patch4"}}, "model.preset", "is a mae preset"),
])
def test_bad_method_settings_are_one_line_errors(partial, key, message):
    with pytest.raises(ConfigError) as err:
        resolve(partial)
    assert err.value.key == key and message in str(err.value) and "\n" not in str(err.value)


def test_new_keys_leave_mae_run_ids_alone_and_enter_beits():
    mae = resolve({})
    assert mae["model"]["head"] == "decoder" and mae["pretrain"]["loss_on"] == "masked"
    assert run_id(mae) == run_id(resolve({"model": {"head": "decoder"}, "pretrain": {"loss_on": "masked"}}))
    beit = resolve({"method": "beit"})
    assert beit["model"]["preset"] == "beit_vit_tiny_patch4" and beit["model"]["head"] == "linear"
    assert run_id(beit) != run_id(resolve({"method": "beit", "pretrain": {"loss_on": "all"}}))
    # a pixel row of a spec that sets the token target's parameters once: they are left out
    pixel = resolve({"method": "beit", "pretrain": {"target": "pixel", "target_params": {"vocab_size": 64}}})
    assert pixel["pretrain"]["target_params"] == {}
    with pytest.raises(ConfigError, match="unknown parameter of target 'pixel'"):
        resolve({"method": "beit", "pretrain": {"target": "pixel", "target_params": {"vocab": 64}}})


def write_test_profile(tmp_path, spec: str, extra: dict) -> Path:
    """A spec extending a committed one, with a `test` profile: its small profile on generated data."""
    test = {"extends": "small", "base": {
        "data": {"name": "synthetic", "img_size": 16, "train_limit": 128, "test_limit": 64},
        "model": {"embed_dim": 32, "depth": 2, "num_heads": 2},
        "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64, **extra},
        "evals": {"linear_probe": {"epochs": 2, "batch_size": 64}, "finetune": {"batch_size": 64}}},
        "seeds": [0], "launch": {"executor": "debug"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"extends": str(REPO / spec), "profiles": {"test": test}}))
    return path


@pytest.mark.parametrize("spec,extra,n_settings", [
    ("ablations/beit/table4.yaml", {"target_params": {"fit_patches": 1000, "epochs": 1, "vocab_size": 32}}, 6),
    ("ablations/simmim/head.yaml", {}, 3),
])
def test_the_small_profiles_run_end_to_end_and_compare_with_the_paper(tmp_path, spec, extra, n_settings):
    path = write_test_profile(tmp_path, spec, extra)
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["run", str(path), "--profile", "test", "--results", str(results), "--reports", str(reports)]) == 0
    (study,) = [p for p in results.iterdir() if not p.name.startswith("_")]
    done = [json.loads(p.read_text()) for p in study.glob("*/result.json")]
    settings = [r for r in done if not r["config"]["baseline"]]
    assert len(settings) == n_settings and len(done) == n_settings + 2
    assert all(0 <= r["finetune_top1"] <= 100 and 0 <= r["linear_probe_top1"] <= 100 for r in done
               if r["config"]["baseline"] != "raw_pixels")
    assert {r["config"]["method"] for r in done} == {spec.split("/")[1]}
    comparison = (reports / study.name / "comparison.md").read_text()
    assert "Baselines" in comparison and "random init" in comparison
