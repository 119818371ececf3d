"""SimMIM's Swin (bench.methods.swin): the Swin keys leave every ViT run id alone and fail clearly
where they do not belong; [M] replaces the masked patches' embeddings; the 1×1 conv + pixel
shuffle head predicts every patch, scored as a ViT's prediction is; the encoder's weights load
into timm's Swin for the evals; and the small profile runs end to end with a Swin preset."""
import json
from pathlib import Path

import pytest
import torch
import yaml
from timm.models.swin_transformer import SwinTransformer
from torch.utils.flop_counter import FlopCounterMode

from bench.cli import main
from bench.core.errors import ConfigError
from bench.data import create_dataset
from bench.methods import create_method
from bench.methods.swin import SimMIMSwin, SwinEncoder
from bench.study.config import resolve
from bench.study.run_ids import ADDED_LATER, hashed_part, run_id, with_added_later
from bench.targets import create_target
from bench.targets.pixels import masked_l1, with_loss
from model_helpers import FixedTargets, mask_of
from bench.train import evals

REPO = Path(__file__).resolve().parents[1]
SWIN = "simmim_swin_tiny_patch2"
SMALL = {"method": "simmim", "model": {"preset": SWIN},
         "data": {"name": "synthetic", "img_size": 16, "train_limit": 128, "test_limit": 64},
         "masking": {"strategy": "coarse", "ratio": 0.6, "params": {"scale": 2}},
         "evals": {"linear_probe": {"feature": "avgpool", "epochs": 2, "warmup_epochs": 0, "batch_size": 64,
                                    "augmentation": "none"},
                   "finetune": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64, "augmentation": "none"}}}
SWIN_KEYS = ("model.depths", "model.stage_num_heads", "model.window_size")


def config(**sections):
    partial = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SMALL.items()}
    for key, value in sections.items():
        partial[key] = {**partial.get(key, {}), **value}
    return resolve(partial)


def build(cfg, target, in_chans=3):
    torch.manual_seed(0)
    return create_method("simmim").build_model(cfg, in_chans, target).eval()


# ----------------------------------------------------------------------------- the config
def test_the_swin_keys_leave_every_vit_run_id_alone():
    for method in ("mae", "beit", "simmim"):
        cfg = resolve({"method": method})
        assert all(cfg["model"][key.split(".")[1]] is None for key in SWIN_KEYS)
        assert not set(hashed_part(cfg)["model"]) & {key.split(".")[1] for key in SWIN_KEYS}
        explicit = resolve({"method": method, "model": {"depths": None, "stage_num_heads": None, "window_size": None}})
        assert run_id(explicit) == run_id(cfg)
    assert all(ADDED_LATER[key] is None for key in SWIN_KEYS)
    stored = resolve({"method": "simmim"})
    for key in SWIN_KEYS:  # a config stored before the keys existed reads (and hashes) as today's
        del stored["model"][key.split(".")[1]]
    today = resolve({"method": "simmim"})
    assert with_added_later(stored) == today and run_id(stored) == run_id(today)
    assert resolve({"method": "simmim"})["model"]["preset"] == "simmim_vit_tiny_patch4"  # still simmim's default
    assert run_id(config()) != run_id(config(model={"window_size": 8}))  # a Swin's keys are hashed


def test_the_swin_presets_resolve_to_their_stages_and_the_patch_grid():
    cfg = resolve({"method": "simmim", "model": {"preset": SWIN}, "evals": {"linear_probe": {"feature": "avgpool"}}})
    m = cfg["model"]
    assert (m["patch_size"], m["embed_dim"], m["window_size"]) == (2, 48, 4)
    assert (m["depths"], m["stage_num_heads"]) == ([2, 2], [3, 6])  # lists, as a stored config reads back
    assert (m["depth"], m["num_heads"], m["decoder_embed_dim"], m["head"]) == (None, None, None, "linear")
    assert cfg["evals"]["knn"]["feature"] == "cls"  # a disabled eval's feature is not checked
    base = resolve({"method": "simmim", "data": {"img_size": 192}, "model": {"preset": "simmim_swin_base_patch4"},
                    "masking": {"strategy": "coarse", "ratio": 0.6, "params": {"scale": 8}},
                    "evals": {"linear_probe": {"feature": "avgpool"}}})
    assert base["model"]["depths"] == [2, 2, 18, 2] and base["model"]["stage_num_heads"] == [4, 8, 16, 32]
    assert create_method("simmim").mask_grid(base) == (48, 48)  # 4 px patches; masks of 8x8 patches = 32 px


@pytest.mark.parametrize("partial,key,message", [
    ({"method": "simmim", "model": {"depths": [2, 2]}}, "model.depths",
     "is a Swin key but preset simmim_vit_tiny_patch4 is a ViT; allowed: null"),
    ({"method": "mae", "model": {"window_size": 7}}, "model.window_size",
     "is a Swin key but preset mae_vit_tiny_patch4"),
    ({"model": {"depth": 4}}, "model.depth", f"is a ViT key but preset {SWIN} is a Swin; allowed: null"),
    ({"model": {"num_heads": 3}}, "model.num_heads", "is a ViT key"),
    ({"model": {"decoder_depth": 2}}, "model.decoder_depth", "is a ViT key"),
    ({"model": {"head": "decoder"}}, "model.head", "'decoder' is not a head of a Swin preset; allowed: linear"),
    ({"model": {"stage_num_heads": [3]}}, "model.stage_num_heads", "has 1 values for 2 stages"),
    ({"model": {"stage_num_heads": [3, 7]}}, "model.stage_num_heads", "7 does not divide stage 2's width 96"),
    ({"model": {"depths": [2, True]}}, "model.depths", "allowed: a list of ints >= 1"),
    ({"data": {"img_size": 18}}, "data.img_size", "18 is not a multiple of the last stage's stride 4"),
    ({"model": {"window_size": 3}}, "model.window_size", "3 does not tile stage 1's 8x8 grid"),
    ({"evals": {"linear_probe": {"feature": "cls"}}}, "evals.linear_probe.feature", "a Swin has no cls token"),
    ({"evals": {"knn": {"enabled": True}}}, "evals.knn.feature", "allowed with a Swin preset: avgpool"),
    ({"evals": {"finetune": {"blocks": 1}}}, "evals.finetune.blocks", "allowed with a Swin preset: null"),
])
def test_keys_of_the_other_architecture_and_misfits_are_one_line_errors(partial, key, message):
    if "method" not in partial:
        partial = {**SMALL, **{k: {**SMALL.get(k, {}), **v} for k, v in partial.items()}}
    with pytest.raises(ConfigError) as err:
        resolve(partial)
    assert err.value.key == key and message in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the model
def test_a_masked_patchs_pixels_never_reach_the_encoder():
    model = build(config(), create_target("pixel"))
    imgs, mask = torch.randn(2, 3, 16, 16), mask_of(2, 64, 38)
    masked = mask[0].nonzero()[0].item()  # a patch masked in image 0
    row, col = divmod(masked, 8)
    other = imgs.clone()
    other[0, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 5.0
    with torch.no_grad():
        out = model.forward_encoder(imgs, mask)
        assert out.shape == (2, 96, 4, 4)  # the last stage: stride 4, 2 x 48 wide
        assert torch.equal(out, model.forward_encoder(other, mask))  # unchanged everywhere, windows and all
        visible = (~mask[0]).nonzero()[0].item()
        row, col = divmod(visible, 8)
        other[0, :, 2 * row:2 * row + 2, 2 * col:2 * col + 2] += 5.0
        assert not torch.allclose(out[0], model.forward_encoder(other, mask)[0])  # a visible patch's do


def test_the_head_is_the_papers_image_and_the_prediction_has_the_targets_shape():
    model = build(config(), create_target("pixel"))
    conv, shuffle = model.decoder
    # the last stage's 96 channels → stride² × channels (stride 4: 2 px patches, one merging), shuffled by 4
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (96, 4 ** 2 * 3, (1, 1))
    assert shuffle.upscale_factor == 4
    imgs, mask = torch.randn(2, 3, 16, 16), mask_of(2, 64, 38)
    with torch.no_grad():
        loss, pred = model(imgs, mask, create_target("pixel"), full_pred=False)
        assert pred.shape == create_target("pixel").targets(imgs, model).shape == (2, 64, 2 * 2 * 3)
        image = model.decoder(model.forward_encoder(imgs, mask))  # B×C×H×W: the reconstructed image
        assert image.shape == imgs.shape and torch.equal(model.unpatchify(pred), image)
        # SimMIM's loss: L1 on the masked pixels (the mask upsampled to pixels) / their number / channels
        pixels = mask.view(2, 1, 8, 8).repeat_interleave(2, 2).repeat_interleave(2, 3).float()
        official = ((image - imgs).abs() * pixels).sum() / pixels.sum() / 3
        l1 = with_loss(create_target("pixel"), "l1")
        assert model(imgs, mask, l1)[0].item() == pytest.approx(official.item(), rel=1e-5)
    other = FixedTargets(torch.zeros(2, 64, 7), masked_l1)  # a target of another width: 7 values per patch
    assert build(config(), other)(imgs, mask, other)[1].shape == (2, 64, 7)


def test_the_loss_ignores_visible_patches_unless_it_scores_all():
    imgs, mask = torch.randn(2, 3, 16, 16), mask_of(2, 64, 38)
    values = torch.randn(2, 64, 12, generator=torch.Generator().manual_seed(1))
    changed = torch.where(mask.unsqueeze(-1), values, values + 1.0)  # other targets at visible patches only
    for loss_on in ("masked", "all"):
        model = build(config(pretrain={"loss_on": loss_on}), FixedTargets(values, masked_l1))
        with torch.no_grad():
            base = model(imgs, mask, FixedTargets(values, masked_l1))[0]
            moved = model(imgs, mask, FixedTargets(changed, masked_l1))[0]
        assert torch.equal(base, moved) if loss_on == "masked" else not torch.allclose(base, moved)


def test_the_flops_estimate_counts_every_matmul():
    model = build(config(data={"img_size": 32}), create_target("pixel"))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.predict(model.forward_encoder(torch.randn(1, 3, 32, 32), mask_of(1, 256, 154)))
    flops = create_method("simmim").flops_per_image(model, 0.6)
    assert flops["total"] == pytest.approx(counter.get_total_flops(), rel=1e-6)
    assert flops["decoder"] == 2 * 8 * 8 * 96 * 48 and flops["encoder"] + flops["decoder"] == flops["total"]


# ----------------------------------------------------------------------------- the evals
def test_the_encoder_state_loads_into_timms_swin_for_a_linear_probe_and_a_finetune():
    cfg = config()
    train, test = create_dataset(cfg["data"], "train"), create_dataset(cfg["data"], "test")
    method = create_method("simmim")
    model = build(cfg, create_target("pixel"))
    assert isinstance(model, SimMIMSwin)
    state = method.encoder_state(model)
    assert not any(k.startswith(("mask_token", "decoder.", "head.")) for k in state)
    plain = SwinTransformer(img_size=16, patch_size=2, in_chans=3, num_classes=10, embed_dim=48, depths=(2, 2),
                            num_heads=(3, 6), window_size=4)
    loaded = plain.load_state_dict(state, strict=False)  # timm's own classifier takes it as it is
    assert set(loaded.missing_keys) == {"head.fc.weight", "head.fc.bias"} and not loaded.unexpected_keys
    swin = evals.build_encoder(cfg, state, 10, 3, "avgpool")
    assert isinstance(swin, SwinEncoder) and swin.num_features == 96 and swin.num_layers == 5
    assert all(torch.equal(swin.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(2, 3, 16, 16)
    assert swin.features(x).shape == (2, 96) and swin(x).shape == (2, 10)
    ids = {name: swin.layer_id(name) for name, _ in swin.named_parameters()}
    assert ids["patch_embed.proj.weight"] == 0 and ids["layers.0.blocks.1.mlp.fc1.weight"] == 2
    assert ids["layers.1.downsample.reduction.weight"] == 2 and ids["layers.1.blocks.1.attn.qkv.weight"] == 4
    assert ids["norm.weight"] == ids["head.weight"] == 5
    no_decay = swin.no_weight_decay_names  # one relative position bias table per block
    assert len(no_decay) == 4 and all(n.endswith("relative_position_bias_table") for n in no_decay)
    with pytest.raises(NotImplementedError, match="evals.finetune.blocks"):
        swin.freeze_for_partial_finetune(1)
    probe = evals.linear_probe(cfg, state, train, test, "cpu")
    assert 0 <= probe["top1"] <= 100 and probe["feature"] == "avgpool"
    result, tuned = evals.finetune(cfg, state, train, test, "cpu", return_model=True)
    assert 0 <= result["top1"] <= 100 and result["trainable_params"] == sum(p.numel() for p in tuned.parameters())
    assert not torch.equal(tuned.state_dict()["layers.0.blocks.0.attn.qkv.weight"],
                           state["layers.0.blocks.0.attn.qkv.weight"])  # a fine-tune step moved the encoder


# ----------------------------------------------------------------------------- end to end
def test_the_small_profile_runs_end_to_end_with_a_swin_and_compares_with_the_paper(tmp_path):
    test = {"extends": "small", "base": {
        "data": {"name": "synthetic", "img_size": 16, "train_limit": 128, "test_limit": 64},
        "model": {"preset": SWIN},
        "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 64},
        "evals": {"linear_probe": {"epochs": 2, "batch_size": 64}, "finetune": {"batch_size": 64}}},
        "grid": {"model.head": ["linear"]}, "seeds": [0], "launch": {"executor": "debug"}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"extends": str(REPO / "ablations/simmim/head.yaml"), "profiles": {"test": test}}))
    results, reports = tmp_path / "results", tmp_path / "reports"
    assert main(["run", str(path), "--profile", "test", "--results", str(results), "--reports", str(reports)]) == 0
    (study,) = [p for p in results.iterdir() if not p.name.startswith("_")]
    done = [json.loads(p.read_text()) for p in study.glob("*/result.json")]
    (setting,) = [r for r in done if not r["config"]["baseline"]]
    assert len(done) == 3 and setting["config"]["model"]["depths"] == [2, 2]
    assert setting["pretrain_gflops_per_image"] > 0 and all(
        0 <= r["finetune_top1"] <= 100 and 0 <= r["linear_probe_top1"] <= 100 for r in done
        if r["config"]["baseline"] != "raw_pixels")
    comparison = (reports / study.name / "comparison.md").read_text()
    assert "Baselines" in comparison and "random init" in comparison
