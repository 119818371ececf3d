"""SparK (bench.methods.spark): the CNN keys leave every other run id alone and fail clearly where
they do not belong; masked positions stay exactly zero through every stage when sparse (and not
when zero-outing); the loss ignores the visible cells; the encoder loads into timm's plain CNN
whose pooled features feed the probe, k-NN and fine-tune; a ResNet and a ConvNeXt preset each
pre-train a step with LAMB and the weight-decay schedule; every masking strategy draws on the last
stage's grid; and the small profile runs end to end."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from bench import masking
from bench.cli import main
from bench.core.errors import ConfigError
from bench.data import create_dataset
from bench.masking import list_strategies
from bench.methods import create_method
from bench.methods.spark import CNNEncoder, SparKModel, create_cnn, stage_features
from bench.methods.spark_sparse import SparseBatchNorm2d, active_mask
from bench.study.config import resolve
from bench.study.run_ids import hashed_part, run_id, with_added_later
from bench.targets import create_target
from bench.targets.pixels import masked_mse
from model_helpers import FixedTargets, mask_of
from bench.train import evals
from bench.train.optim import weight_decay_at
from bench.train.pretrain import build_pretraining, epoch_generator

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("spark_resnet_tiny", "spark_convnext_tiny")
CNN_KEYS = ("backbone", "sparse", "densify", "hierarchical")
EVALS = {"linear_probe": {"feature": "avgpool", "epochs": 1, "warmup_epochs": 0, "batch_size": 32,
                          "augmentation": "none"},
         "finetune": {"feature": "avgpool", "epochs": 1, "warmup_epochs": 0, "batch_size": 32,
                      "augmentation": "none"},
         "knn": {"enabled": True, "feature": "avgpool", "k": 5}}


def config(preset="spark_resnet_tiny", **sections):
    partial = {"method": "spark", "model": {"preset": preset}, "masking": {"ratio": 0.6},
               "data": {"name": "synthetic", "img_size": 32, "train_limit": 64, "test_limit": 32},
               "evals": EVALS}
    for key, value in sections.items():
        partial[key] = {**partial.get(key, {}), **value}
    return resolve(partial)


def build(cfg, target, in_chans=3) -> SparKModel:
    torch.manual_seed(0)
    return create_method("spark").build_model(cfg, in_chans, target)


# ----------------------------------------------------------------------------- the config
def test_the_cnn_keys_leave_every_other_run_id_alone_and_resolve_to_the_papers():
    for method in ("mae", "beit", "simmim"):
        cfg = resolve({"method": method})
        assert all(cfg["model"][k] is None for k in CNN_KEYS)
        assert cfg["pretrain"]["optimizer"] == "adamw" and cfg["pretrain"]["weight_decay_end"] is None
        hashed = hashed_part(cfg)
        assert not set(hashed["model"]) & set(CNN_KEYS)
        assert not {"optimizer", "weight_decay_end"} & set(hashed["pretrain"])
        assert run_id(resolve({"method": method, "pretrain": {"optimizer": "lamb"}})) != run_id(cfg)
        stored = resolve({"method": method})  # a config stored before the keys reads (and hashes) as today's
        for key in CNN_KEYS:
            del stored["model"][key]
        del stored["pretrain"]["optimizer"], stored["pretrain"]["weight_decay_end"]
        assert with_added_later(stored) == cfg and run_id(stored) == run_id(cfg)
    cfg = config()
    m = cfg["model"]
    assert (m["backbone"], m["patch_size"], m["depths"], m["embed_dim"]) == ("resnet18", 8, [1, 1], 32)
    assert (m["sparse"], m["densify"], m["hierarchical"], m["head"]) == (True, True, True, "decoder")
    assert create_method("spark").mask_grid(cfg) == (4, 4)
    big = resolve({"method": "spark", "model": {"preset": "spark_resnet50"}, "data": {"img_size": 224},
                   "evals": {"linear_probe": {"feature": "avgpool"}}})
    assert create_method("spark").mask_grid(big) == (7, 7)  # stride 32 at 224 px
    assert run_id(config(model={"sparse": False})) != run_id(cfg)


@pytest.mark.parametrize("partial,key,message", [
    ({"method": "mae", "model": {"sparse": False}}, "model.sparse", "is a CNN key (SparK)"),
    ({"method": "spark", "model": {"depth": 4}}, "model.depth", "is not a key of a CNN preset"),
    ({"method": "spark", "model": {"patch_size": 16}}, "model.patch_size", "is not the last stage's stride 8"),
    ({"method": "spark", "model": {"head": "linear"}}, "model.head", "allowed: decoder"),
    ({"method": "spark", "model": {"backbone": "vit_base_patch16_224"}}, "model.backbone", "resnet or convnext"),
    ({"method": "spark", "model": {}}, "evals.linear_probe.feature", "a CNN has no cls token"),
])
def test_keys_that_do_not_fit_a_cnn_are_one_line_errors(partial, key, message):
    if partial["method"] == "spark":
        partial = {**partial, "model": {"preset": "spark_resnet_tiny", **partial["model"]}}
        if key != "evals.linear_probe.feature":
            partial["evals"] = {"linear_probe": {"feature": "avgpool"}}
    with pytest.raises(ConfigError) as err:
        resolve(partial)
    assert err.value.key == key and message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("preset", PRESETS)
def test_masked_positions_stay_exactly_zero_through_every_stage_when_sparse(preset):
    imgs, mask = torch.randn(2, 3, 32, 32), mask_of(2, 16, 10)
    other = imgs.clone()
    cell = mask[0].nonzero()[0].item()
    row, col = divmod(cell, 4)
    other[0, :, 8 * row:8 * row + 8, 8 * col:8 * col + 8] += 5.0  # a masked cell's pixels
    for sparse in (True, False):
        model = build(config(preset, model={"sparse": sparse}), create_target("norm_pixel"))
        with torch.no_grad():
            features, visible = model.forward_encoder(imgs, mask)
            assert len(features) == len(model.strides) and features[-1].shape[-1] == 4
            hidden = [(f * ~v).abs().max().item() for f, v in zip(features, visible)]
            if sparse:
                assert hidden == [0.0] * len(features)
                moved = model.forward_encoder(other, mask)[0]
                assert all(torch.equal(a, b) for a, b in zip(features, moved))  # nothing of it enters
            else:  # zero-outing: the dense CNN fills the holes
                assert hidden[-1] > 1e-3
            assert all((f * v).abs().max() > 0 for f, v in zip(features, visible))


def test_sparse_batchnorm_takes_its_statistics_over_the_visible_positions():
    bn = SparseBatchNorm2d(3, momentum=1.0)
    x, visible = torch.randn(2, 3, 4, 4), ~mask_of(2, 4, 2).view(2, 1, 2, 2)
    with active_mask(visible):
        out = bn(x)
    keep = visible.repeat_interleave(2, 2).repeat_interleave(2, 3)
    rows = x.permute(0, 2, 3, 1)[keep[:, 0]]
    assert torch.allclose(bn.running_mean, rows.mean(0), atol=1e-6)
    assert torch.equal(out * ~keep, torch.zeros_like(out))
    assert torch.allclose(out.permute(0, 2, 3, 1)[keep[:, 0]].mean(0), torch.zeros(3), atol=1e-5)


@pytest.mark.parametrize("model_keys", [{}, {"hierarchical": False}, {"densify": False}])
def test_the_loss_ignores_visible_cells_unless_it_scores_all(model_keys):
    imgs, mask = torch.randn(2, 3, 32, 32), mask_of(2, 16, 10)
    values = torch.randn(2, 16, 8 * 8 * 3, generator=torch.Generator().manual_seed(1))
    changed = torch.where(mask.unsqueeze(-1), values, values + 1.0)
    for loss_on in ("masked", "all"):
        model = build(config(model=model_keys, pretrain={"loss_on": loss_on}), FixedTargets(values, masked_mse))
        with torch.no_grad():
            base, pred = model(imgs, mask, FixedTargets(values, masked_mse))
            moved = model(imgs, mask, FixedTargets(changed, masked_mse))[0]
        assert pred.shape == (2, 16, 192)
        assert torch.equal(base, moved) if loss_on == "masked" else not torch.allclose(base, moved)
    other = FixedTargets(torch.zeros(2, 16, 7), masked_mse)  # a target of another width: 7 values per cell
    with torch.no_grad():
        assert build(config(model=model_keys), other)(imgs, mask, other)[1].shape == (2, 16, 7)
    norm = create_target("norm_pixel")  # the paper's: MSE on per-patch normalised pixels, masked cells
    model = build(config(model=model_keys), norm)
    with torch.no_grad():
        loss, pred = model(imgs, mask, norm)
        patches = model.patchify(imgs)
        target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
        assert loss.item() == pytest.approx((((pred - target) ** 2).mean(-1)[mask]).mean().item(), rel=1e-5)


def test_every_masking_strategy_draws_on_the_last_stages_grid():
    imgs = torch.randn(2, 3, 32, 32)
    for strategy in list_strategies():
        extra = {"pretrain": {"loss_on": "all"}} if strategy == "none" else {}
        cfg = config(masking={"strategy": strategy, "ratio": 0.75}, **extra)
        grid = create_method("spark").mask_grid(cfg)
        mask = masking.generate(strategy, 2, grid, 0.75, cfg["masking"]["params"], torch.Generator().manual_seed(0),
                                "cpu")
        target = create_target("norm_pixel")
        with torch.no_grad():
            loss, pred = build(cfg, target)(imgs, mask, target)
        assert mask.shape == (2, 16) and pred.shape == (2, 16, 192) and torch.isfinite(loss), strategy


# ----------------------------------------------------------------------------- pre-training and evals
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_pretrains_a_step_with_lamb_and_the_weight_decay_schedule(preset):
    cfg = config(preset, pretrain={"optimizer": "lamb", "weight_decay": 0.04, "weight_decay_end": 0.2,
                                   "clip_grad": 5.0, "batch_size": 16, "epochs": 2, "warmup_epochs": 0})
    train = create_dataset(cfg["data"], "train")
    method, model, step = build_pretraining(cfg, train, torch.device("cpu"))
    assert type(step.optimizer).__name__ == "Lamb" and step.decay_groups
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = next(iter(train.batches(16, shuffle=True, seed=0, epoch=0, drop_last=True)))
    wd = weight_decay_at(1.0, 0.04, 0.2, 2)
    loss = step(images, 1e-3, epoch_generator(0, 0, torch.device("cpu")), weight_decay=wd)
    assert torch.isfinite(loss) and wd == pytest.approx(0.12)
    assert weight_decay_at(0, 0.04, 0.2, 2) == pytest.approx(0.04) and weight_decay_at(2, 0.04, 0.2, 2) == 0.2
    assert all(step.optimizer.param_groups[i]["weight_decay"] == wd for i in step.decay_groups)
    after = model.state_dict()
    assert not torch.equal(before["encoder.conv1.weight" if "resnet" in preset else "encoder.stem.0.weight"],
                           after["encoder.conv1.weight" if "resnet" in preset else "encoder.stem.0.weight"])
    flops = method.flops_per_image(model, 0.6)
    assert flops["encoder"] > 0 and flops["decoder"] > 0 and flops["total"] == flops["encoder"] + flops["decoder"]


def test_the_pooled_features_feed_the_probe_knn_and_finetune():
    cfg = config()
    train, test = create_dataset(cfg["data"], "train"), create_dataset(cfg["data"], "test")
    method = create_method("spark")
    state = method.encoder_state(build(cfg, create_target("norm_pixel")))
    assert state and not any(k.startswith(("decoder", "encoder.")) for k in state)
    plain = create_cnn(cfg, 3)
    plain.load_state_dict(state)  # timm's plain ResNet takes the weights as they are
    encoder = evals.build_encoder(cfg, state, 10, 3, "avgpool")
    assert isinstance(encoder, CNNEncoder) and encoder.num_features == 64 and encoder.num_layers == 3
    x = torch.randn(2, 3, 32, 32)
    plain.eval(), encoder.eval()
    with torch.no_grad():
        assert torch.allclose(encoder.features(x), stage_features(plain, x)[-1].mean(dim=(2, 3)))
    ids = {n: encoder.layer_id(n) for n, _ in encoder.named_parameters()}
    assert ids["net.conv1.weight"] == 0 and ids["net.layer1.0.conv1.weight"] == 1
    assert ids["net.layer2.0.conv1.weight"] == 2 and ids["head.weight"] == 3
    probe = evals.linear_probe(cfg, state, train, test, "cpu")
    knn = evals.knn(cfg, state, train, test, "cpu")
    assert 0 <= probe["top1"] <= 100 and 0 <= knn["top1"] <= 100
    result, tuned = evals.finetune(cfg, state, train, test, "cpu", return_model=True)
    assert 0 <= result["top1"] <= 100
    assert not torch.equal(tuned.state_dict()["net.layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


# ----------------------------------------------------------------------------- end to end
def test_the_small_profile_runs_end_to_end_and_compares_with_the_paper(tmp_path):
    test = {"extends": "small", "base": {
        "data": {"name": "synthetic", "img_size": 32, "train_limit": 64, "test_limit": 32},
        "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 32},
        "evals": {"linear_probe": {"epochs": 1, "batch_size": 32}, "finetune": {"batch_size": 32}}},
        "seeds": [0], "launch": {"executor": "debug"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"extends": str(REPO / "ablations/spark/sparse.yaml"), "profiles": {"test": test}}))
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["run", str(path), "--profile", "test", "--results", str(results), "--reports", str(reports)]) == 0
    (study,) = [p for p in results.iterdir() if not p.name.startswith("_")]
    done = [json.loads(p.read_text()) for p in study.glob("*/result.json")]
    settings = [r for r in done if not r["config"]["baseline"]]
    assert len(settings) == 2 and len(done) == 4  # sparse, zero-outing; one random-init and one raw-pixels run
    assert {r["config"]["model"]["sparse"] for r in settings} == {True, False}
    assert all(r["config"]["pretrain"]["optimizer"] == "lamb" for r in settings)
    assert all(r["pretrain_gflops_per_image"] > 0 for r in settings)
    assert all(0 <= r["finetune_top1"] <= 100 and 0 <= r["linear_probe_top1"] <= 100 for r in done
               if r["config"]["baseline"] != "raw_pixels")
    comparison = (reports / study.name / "comparison.md").read_text()
    assert "Baselines" in comparison and "random init" in comparison
