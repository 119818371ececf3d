"""VideoMAE (bench.methods.videomae): masks over the space-time grid, the model, one pre-training
step and the evals on tiny in-memory clips, and the config's video checks. No video dataset is
needed: the tests mark `synthetic` as video (model_checks.dataset_entry) and build clips
N×C×T×H×W in memory."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from bench import masking
from bench.core.errors import ConfigError
from bench.data import dataset_entry
from bench.data.datasets import ImageSet
from bench.methods import create_method
from bench.study import model_checks
from bench.study.config import resolve
from bench.targets import create_target

GRID = (8, 8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- masks over time
def test_tube_repeats_one_exact_spatial_mask_over_time():
    params = masking.resolve_params("tube", {}, 0.9, GRID)
    mask = masking.generate("tube", 6, GRID, 0.9, params, gen(), frames=4)
    assert mask.shape == (6, 4, 64) and (mask == mask[:, :1]).all()
    assert (mask.sum(-1) == masking.num_masked(64, 0.9)).all()


def test_random_with_frames_is_exact_over_space_time_and_not_tubes():
    mask = masking.generate("random", 32, GRID, 0.9, {}, gen(), frames=4)
    assert mask.shape == (32, 4, 64)
    assert (mask.flatten(1).sum(1) == masking.num_masked(4 * 64, 0.9)).all()
    per_frame = mask.sum(-1)
    assert len(per_frame.unique()) > 1  # frames hold different counts: one draw over all T·L tokens
    assert not (mask == mask[:, :1]).all(dim=(1, 2)).any()
    again = masking.generate("random", 32, GRID, 0.9, {}, gen(), frames=4)
    assert torch.equal(mask, again)  # deterministic from the generator


def test_frame_masks_seven_whole_frames_of_eight():
    mask = masking.generate("frame", 16, GRID, 0.875, {}, gen(), frames=8)
    whole = mask.all(-1)
    assert ((mask.any(-1)) == whole).all()  # a frame is all masked or all visible
    assert (whole.sum(1) == 7).all() and len({tuple(r.tolist()) for r in whole}) > 1


def test_frame_without_frames_is_a_config_error():
    with pytest.raises(ConfigError, match=r"masking.strategy: .*needs video: data.frames"):
        masking.generate("frame", 2, GRID, 0.875, {}, gen())
    with pytest.raises(ConfigError, match=r"masking.strategy: .*needs video: data.frames"):
        resolve({"masking": {"strategy": "frame"}})
    with pytest.raises(ConfigError, match="masking.params.spatial"):
        masking.resolve_params("tube", {"spatial": "frame"}, 0.9, GRID)


# ----------------------------------------------------------------------------- config
@pytest.fixture
def synthetic_is_video(monkeypatch):
    real = dataset_entry
    monkeypatch.setattr(model_checks, "dataset_entry",
                        lambda name: dataclasses.replace(real(name), video=True) if name == "synthetic" else real(name))


def video_cfg(**over) -> dict:
    cfg = {"method": "videomae", "data": {"name": "synthetic", "frames": 4, "augmentation": "crop_rand"},
           "model": {"patch_size": 4},  # the tiny preset's 8 px patches made 4 px: an 8x8 grid of cubes
           "masking": {"strategy": "tube", "ratio": 0.9},
           "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8, "blr": 1e-3},
           "evals": {"linear_probe": {"feature": "avgpool", "epochs": 2, "warmup_epochs": 0, "batch_size": 8,
                                      "augmentation": "none"},
                     "finetune": {"epochs": 1, "warmup_epochs": 0, "batch_size": 8}}}
    for key, value in over.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    return cfg


def test_config_errors_name_the_key(synthetic_is_video):
    cfg = resolve(video_cfg())
    assert cfg["model"]["preset"] == "videomae_vit_tiny_patch8" and cfg["model"]["tubelet_size"] == 2
    bad = {
        "data.name": video_cfg(data__name="fashion_mnist"),              # videomae on images
        "data.frames": video_cfg(data__frames=5),                        # not whole tubelets
        "pretrain.target": video_cfg(pretrain__target="hog"),
        "evals.linear_probe.feature": video_cfg(evals__linear_probe={"feature": "cls"}),
    }
    for key, partial in bad.items():
        with pytest.raises(ConfigError, match=f"^{key}: "):
            resolve(partial)
    with pytest.raises(ConfigError, match="^data.frames: is 8 but method mae takes images"):
        resolve({"data": {"frames": 8}})
    with pytest.raises(ConfigError, match="^data.name: synthetic holds clips but method mae"):
        resolve({"data": {"name": "synthetic"}})
    with pytest.raises(ConfigError, match="^model.tubelet_size: "):
        resolve({"model": {"tubelet_size": 2}})


# ----------------------------------------------------------------------------- the model
def tiny_model(cfg: dict, target="norm_pixel"):
    torch.manual_seed(0)
    return create_method("videomae").build_model(cfg, 3, create_target(target)).eval()


class Perturbed:
    """A target that moves cube `index`'s target of sample 0 by one: what the loss reads of it."""

    def __init__(self, base, index: int):
        self.base, self.index = base, index

    def targets(self, clips, model):
        out = self.base.targets(clips, model).clone()
        out[0, self.index] += 1.0
        return out

    def loss(self, pred, target, mask):
        return self.base.loss(pred, target, mask)


def test_patchify_shapes_and_the_loss_reads_only_masked_cubes(synthetic_is_video):
    cfg = resolve(video_cfg())
    model, target = tiny_model(cfg), create_target("norm_pixel")
    clips = torch.randn(2, 3, 4, 32, 32)
    cubes = model.patchify(clips)
    assert cubes.shape == (2, 2 * 8 * 8, 2 * 4 * 4 * 3) and torch.equal(model.unpatchify(cubes), clips)
    grid = create_method("videomae").mask_grid(cfg)
    assert grid == (2, 8, 8)
    params = cfg["masking"]["params"]
    mask = masking.generate("tube", 2, grid[1:], 0.9, params, gen(), frames=grid[0]).flatten(1)
    masked = int(mask[0].sum())
    seen = []
    hook = model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    with torch.no_grad():
        loss, pred = model(clips, mask, target)
        full_loss, full = model(clips, mask, target, full_pred=True)
        visible_idx, masked_idx = int((~mask[0]).nonzero()[0]), int(mask[0].nonzero()[0])
        same, _ = model(clips, mask, Perturbed(target, visible_idx))
        moved, _ = model(clips, mask, Perturbed(target, masked_idx))
    hook.remove()
    assert seen[0] == (2, 128 - masked, 128)  # the encoder sees the visible cubes only
    assert pred.shape == (2, masked, 96) and full.shape == (2, 128, 96)
    assert torch.allclose(full[mask].view(2, masked, 96), pred, atol=1e-5)
    assert torch.allclose(loss, full_loss, atol=1e-6)
    assert torch.equal(same, loss) and not torch.equal(moved, loss)
    flops = model.flops_per_image(0.9)
    assert 0 < flops["encoder"] < flops["total"]


# ----------------------------------------------------------------------------- the loop and the evals
def clip_set(n: int = 16, frames: int = 4) -> ImageSet:
    """Clips of a bright square moving right (class 0) or left (class 1)."""
    clips = torch.zeros(n, 3, frames, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    for i in range(n):
        for t in range(frames):
            x = 4 + (3 * t if labels[i] == 0 else 12 - 3 * t) + i % 3
            clips[i, :, t, 10:22, x:x + 12] = 200
    return ImageSet("synthetic", clips, labels, 2)


def test_one_pretraining_step_and_the_evals_on_clips(synthetic_is_video):
    from bench.train import evals
    from bench.train.pretrain import build_pretraining, epoch_generator, random_init_encoder_state

    cfg = resolve(video_cfg())
    train = clip_set()
    method, model, step = build_pretraining(cfg, train, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = next(train.batches(8, shuffle=True, seed=0, drop_last=True))
    loss = step(images, 1e-3, epoch_generator(0, 0, torch.device("cpu")))
    step.split_step.close()
    assert torch.isfinite(loss)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("blocks.") for k in changed) and any(k.startswith("decoder_") for k in changed)
    state = method.encoder_state(model)
    assert not any(k.startswith(("decoder", "mask_token")) for k in state)
    probe = evals.linear_probe(cfg, state, train, train, "cpu")
    tuned = evals.finetune(cfg, random_init_encoder_state(cfg, 3), train, train, "cpu")
    assert 0 <= probe["top1"] <= 100 and 0 <= tuned["top1"] <= 100
    for strategy in ("random", "frame"):  # every clip hides as many cubes: the encoder's batch is square
        other = resolve(video_cfg(masking__strategy=strategy))
        _, _, other_step = build_pretraining(other, train, torch.device("cpu"))
        assert torch.isfinite(other_step(images, 1e-3, epoch_generator(0, 0, torch.device("cpu"))))
        other_step.split_step.close()
    raw = evals.build_encoder({**cfg, "baseline": "raw_pixels"}, {}, 2, 3, "avgpool")
    assert raw.num_features == 3 * 4 * 32 * 32  # the whole clip
    with pytest.raises(ValueError, match="allowed: avgpool"):
        method.eval_encoder(cfg, state, 2, 3, "cls")
