"""A smoke test at the real size: each paper-scale recipe (ablations/<paper>/_recipe.yaml, no
profile) runs end to end — one pre-training step, one linear-probe step and one fine-tune step —
on the CPU, through the job function a launch executes (bench.launch.job.run_one), on a
generated dataset of a few 256 px JPEGs (an ImageFolder) or a few short clips (a videofolder).

The model preset, img_size, patch size, masking and the recipe's values (MAE's and VideoMAE's
fine-tune mixup / cutmix / RandAugment / erasing included) are the paper's; only what makes a run
one step on this data is overridden (`one_step`, each override commented). The point is proof that
the paper-scale path runs, not a number: the top-1s are only checked to be percentages.

    OMP_NUM_THREADS=2 python -m pytest -q -s tests/test_real_size.py
"""
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from bench.data import identity_digest
from bench.data.video import write_clip
from bench.launch.job import run_one
from bench.study.config import check_fits, resolve
from bench.study.spec import load_study

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
CLASSES = 2
PER_CLASS = 1           # per class and split: 2 training images (one batch of 2: mixup needs an even one)
IMAGE_SIDE = 256        # ImageNet-like JPEGs, larger than the 224 / 192 px the models see
CLIP_FRAMES = 32        # VideoMAE: 16 frames at the recipe's frame_stride 2 span 32 raw frames
CLIP_H, CLIP_W = 128, 160  # not square: the reader resizes the shorter side and centre-crops

# (spec, the run to take: its grid values, the recipe's own setting where the spec varies it)
CASES = {
    "mae": ("mae/table1f_mask_sampling.yaml", {"masking.strategy": "random", "masking.ratio": 0.75}),
    "beit": ("beit/table4.yaml", {"masking.strategy": "block", "pretrain.target": "dvae_token",
                                  "pretrain.loss_on": "masked"}),
    "simmim": ("simmim/masking.yaml", {"masking.params.scale": 2, "masking.ratio": 0.6}),
    "spark": ("spark/sparse.yaml", {"model.sparse": True}),
    "videomae": ("videomae/table1b_masking.yaml", {"masking.strategy": "tube", "masking.ratio": 0.9}),
}


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)  # the generated data only


def write_imagefolder(root: Path) -> int:
    """<root>/train/<class>/*.JPEG and <root>/val/<class>/*.JPEG, RGB 256 px: a noisy colour ramp per
    class. Returns the number of training images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, IMAGE_SIDE)
    for split in ("train", "val"):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for k in range(PER_CLASS):
                base = np.stack([ramp[None, :] * np.ones((IMAGE_SIDE, 1)),
                                 ramp[:, None] * np.ones((1, IMAGE_SIDE)),
                                 np.full((IMAGE_SIDE, IMAGE_SIDE), c / max(CLASSES - 1, 1))], axis=-1)
                pixels = np.clip(255 * base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{k}.JPEG", quality=90)
    return CLASSES * PER_CLASS


def write_clip_tree(root: Path) -> int:
    """<root>/train/<class>/<clip>.mp4 and <root>/val/<class>/<clip>.mp4: CLIP_FRAMES frames of
    CLIP_H x CLIP_W, a bar moving right (class 0) or left (class 1). Returns the number of
    training clips."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(CLASSES):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for k in range(PER_CLASS):
                frames = rng.integers(0, 60, (CLIP_FRAMES, CLIP_H, CLIP_W, 3), dtype=np.uint8)
                for t in range(CLIP_FRAMES):
                    x = (4 * t if c == 0 else CLIP_W - 16 - 4 * t) % (CLIP_W - 16)
                    frames[t, :, x:x + 16] = 230
                write_clip(folder / f"clip{k}.mp4", frames)
    return CLASSES * PER_CLASS


def paper_run(spec: str, pick: dict) -> dict:
    """The resolved config of the spec's run with the grid values `pick`, at the paper's scale
    (no profile): the recipe's model, image size, masking and training values."""
    study = load_study(ABLATIONS / spec, profile=None)
    runs = [r for r in study.runs if not r.config.get("baseline")]
    chosen = next((r for r in runs if all(r.varying.get(k) == v for k, v in pick.items())), runs[0])
    return copy.deepcopy(chosen.config)


def one_step(config: dict, n_train: int) -> dict:
    """The run made one step of each phase on `n_train` training images; nothing else changed."""
    pre, probe, ft = config["pretrain"], config["evals"]["linear_probe"], config["evals"]["finetune"]
    pre["epochs"] = 1                 # one epoch ...
    pre["warmup_epochs"] = 0          # (a warmup longer than the run is not allowed)
    pre["batch_size"] = n_train       # ... of one batch: every training image, one step
    for section in (probe, ft):
        section["epochs"] = 1         # one epoch of one batch: one step
        section["warmup_epochs"] = 0
        section["batch_size"] = n_train  # even: mixup / cutmix pair a batch with its reverse
    config["data"]["train_limit"] = None  # every generated image (the recipes set none: kept explicit)
    config["data"]["test_limit"] = None
    if pre["target"] == "dvae_token":
        patches = n_train * (config["data"]["img_size"] // config["model"]["patch_size"]) ** 2  # 2 x 196
        # The tokenizer's codebook is k-means-initialised on its fit patches, so a vocabulary of 512
        # (the recipe's) needs at least 512 of them, and 2 images at 224 / 16 px give 392: the
        # largest power of two below that (256). fit_patches stays the default 100,000 (the fit
        # takes every patch there is when the training set has fewer); the tokenizer's
        # architecture, epochs and batch stay the recipe's.
        pre["target_params"]["vocab_size"] = 2 ** int(math.log2(patches))
    config = resolve(config)  # the overrides checked as a spec's would be
    check_fits(config)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("paper", list(CASES))
def test_paper_scale_recipe_runs_one_step_of_each_phase(paper, tmp_path):
    spec, pick = CASES[paper]
    config = paper_run(spec, pick)
    data_root = tmp_path / "data"
    is_video = config["data"]["name"] == "videofolder"
    n_train = (write_clip_tree if is_video else write_imagefolder)(data_root)
    # the paper's scale as the recipe writes it: nothing of the model or input is shrunk here
    paper_scale = {"mae": ("mae_vit_large_patch16", 224, 16), "beit": ("beit_vit_base_patch16", 224, 16),
                   "simmim": ("simmim_vit_base_patch16", 192, 16), "spark": ("spark_resnet50", 224, 32),
                   "videomae": ("videomae_vit_base_patch16", 224, 16)}[paper]
    assert (config["model"]["preset"], config["data"]["img_size"], config["model"]["patch_size"]) == paper_scale

    config = one_step(config, n_train)
    config["data"]["identity"] = identity_digest(config["data"], str(data_root))  # as load_study with the data
    assert config["data"]["identity"] is not None

    start = time.perf_counter()
    out = run_one(config, f"real_size_{paper}", str(tmp_path / "results"),
                  {"device": "cpu", "threads": 2, "data_root": str(data_root)}, raise_on_failure=True)
    wall = time.perf_counter() - start
    assert out["status"] == "done"
    folder = tmp_path / "results" / f"real_size_{paper}" / out["run_id"]
    result = json.loads((folder / "result.json").read_text())
    print(f"\n{paper}: {config['model']['preset']} at {config['data']['img_size']} px"
          f"{' x %d frames' % config['data']['frames'] if is_video else ''}, {n_train} training "
          f"{'clips' if is_video else 'images'}: {wall:.1f} s (pretrain {result['pretrain_wall_s']:.1f} s, "
          f"loss {result['pretrain_final_loss']:.4f}; probe {result['linear_probe_top1']:.1f}%, "
          f"fine-tune {result['finetune_top1']:.1f}%)")
    assert math.isfinite(result["pretrain_final_loss"])
    for key in ("finetune_top1", "linear_probe_top1"):
        assert math.isfinite(result[key]) and 0.0 <= result[key] <= 100.0, (key, result[key])
    assert result["data_identity"]["digest"] == config["data"]["identity"]
    assert result["config"]["model"]["preset"] == config["model"]["preset"]
    ft = result["config"]["evals"]["finetune"]
    if paper in ("mae", "videomae"):  # the paper's fine-tune recipe ran, not a light one
        assert ft["mixup"] > 0 and ft["cutmix"] > 0 and ft["rand_augment"]
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    phases = {row.get("phase") for row in metrics}
    assert {"pretrain", "linear_probe", "finetune"} <= phases, phases


def test_dvae_token_with_fewer_training_patches_than_codes_fails_with_one_line():
    """The recipe's vocabulary (512) on a training set of fewer patches (2 images at 224 / 16 px:
    392) stops with one line naming the key, not an IndexError from the codebook's k-means."""
    import torch

    from bench.core.errors import ConfigError
    from bench.targets import resolve_params
    from bench.targets.tokenizer import train_tokenizer

    params = resolve_params("dvae_token", {"hidden": 8, "code_dim": 4})  # vocab 512, fit_patches 100,000
    with pytest.raises(ConfigError, match=r"^pretrain\.target_params\.vocab_size: 512 codes need .* has 392 "
                                          r".*allowed: at most 392$"):
        train_tokenizer(torch.randn(392, 768), params)
