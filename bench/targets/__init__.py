"""Reconstruction targets: one registry of what a method predicts for each masked patch.

    pixel       the (normalised) pixels of the patch, MSE (MAE Table 1d "pixel w/o norm")
    norm_pixel  the pixels normalised by the patch's own mean and std (MAE's norm_pix_loss)
    pca         the patch projected on the top `components` principal components of the training
                patches (MAE Table 1d "PCA": 96 of them), MSE
    dvae_token  the id of the patch's code in a small per-patch VQ-VAE trained on the training set
                (MAE Table 1d "dVAE token", BEiT's target), cross-entropy over `vocab_size` ids
    dalle_token BEiT's tokenizer: DALL-E's dVAE encoder from a local encoder.pkl (never downloaded);
                the token of each patch, cross-entropy over `vocab_size` (8192) ids
    hog         MaskFeat's histograms of oriented gradients: per patch, `bins` unsigned
                orientations summed over cells of `cell` px, one set per channel, L2-normalised; MSE

A target turns the normalised images the model sees (B×C×H×W) into per-patch targets with
`targets(imgs, model)` — B×L×D floats, or B×L token ids — and scores the decoder's prediction
on the masked patches only with `loss(pred, targets, mask)`; `out_dim(patch_dim)` is the width
of the decoder's head. pca and dvae_token are fitted once on the normalised, un-augmented
training images and kept in the shared cache (bench.core.cache, kind "targets") under a digest of
everything the fit depends on (bench.targets.fit), so runs that differ elsewhere reuse them.

dalle_token is optional and local-only: a user who has DALL-E's dVAE weights on disk sets
`target: dalle_token` and `target_params: {encoder_path: /path/to/encoder.pkl}` (a null path is a
ConfigError at resolve time). The pickle is loaded as it is (it needs the `dall_e` package: pip
install DALL-E; mimbench does not depend on it), nothing is fetched or cached, and the images are
tokenised as BEiT does: pixels back in [0, 1], resized to half the model's side so the 8×
downsampling encoder gives one token per model patch, DALL-E's map_pixels, argmax (bench.targets.dalle).

This module imports no torch: each entry names its builder as "module:function" (pixels.py,
pca.py, tokenizer.py, hog.py, dalle.py), imported by `create_target` on first use.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from bench.core.errors import ConfigError
from bench.core.options import Option
from bench.core.registry import Registry, load


@dataclass(frozen=True)
class TargetEntry:
    """A registered target: its builder, its parameters and what building it takes."""

    build: str  # "module:function", called as (params, train_set, cfg, cache_dir, device) -> target
    params: dict = field(default_factory=dict)  # name -> Option (default, type, range)
    needs: tuple = ()  # of "train_set", "cfg": what build must be given
    check: Callable[[dict], None] | None = None  # a cross-parameter check on the resolved params
    doc: str = ""
    fits: Callable[[dict, int, int], None] | None = None  # (params, patch_size, channels): the patch allows them


_targets = Registry("target", "pretrain.target")


def register_target(name: str, build: str, params: dict | None = None, needs: tuple = (),
                    check: Callable[[dict], None] | None = None, doc: str = "",
                    fits: Callable[[dict, int, int], None] | None = None) -> TargetEntry:
    """File the target `name`, built by the "module:function" `build`. `fits(params, patch_size,
    channels)` raises a ConfigError when the resolved params do not fit the model's patches."""
    return _targets.add(name, TargetEntry(build, dict(params or {}), tuple(needs), check, doc, fits))


def list_targets() -> tuple[str, ...]:
    return _targets.names()


TOKEN_TARGETS = ("dvae_token", "dalle_token")  # scored by cross-entropy over ids: pretrain.loss does not apply


def is_token_target(name: str) -> bool:
    return name in TOKEN_TARGETS


def resolve_params(name: str, params: dict) -> dict:
    """The target's parameters with defaults filled in (raises one-line ConfigError naming the key)."""
    entry = _targets.get(name)
    if not isinstance(params or {}, dict):
        raise ConfigError("pretrain.target_params", f"{params!r} has the wrong type; allowed: a mapping")
    options = entry.params
    others = {key for _, other in _targets.items() for key in other.params}
    for key in params or {}:
        if key not in options and key not in others:
            raise ConfigError(f"pretrain.target_params.{key}",
                              f"unknown parameter of target {name!r}; allowed: {', '.join(options) or 'none'}")
    # another target's parameters are left out: a spec that varies the target (BEiT Table 4:
    # tokens or pixels) sets the token target's once, and a pixel run's resolved config omits them
    out = {key: option.check(f"pretrain.target_params.{key}", (params or {}).get(key, option.default))
           for key, option in options.items()}
    if entry.check is not None:
        entry.check(out)
    return out


def check_fits(name: str, params: dict, patch_size: int, channels: int) -> None:
    """Raise a one-line ConfigError when the target's resolved `params` do not fit patches of
    `patch_size`² px × `channels` (pca's components, hog's cell): checked before anything runs."""
    entry = _targets.get(name)
    if entry.fits is not None:
        entry.fits(params, patch_size, channels)


def create_target(name: str, params: dict | None = None, *, train_set=None, cfg: dict | None = None,
                  cache_dir=None, device="cpu"):
    """The target `name` with `params` (defaults filled in). pca and dvae_token are fitted on
    `train_set` as `cfg` (the resolved run config) sees it, cached under `cache_dir` (None: fitted
    anew); hog reads the patch size from `cfg`; the pixel targets need nothing else."""
    import torch

    params = resolve_params(name, params or {})
    entry = _targets.get(name)
    given = {"train_set": train_set is not None, "cfg": cfg is not None}
    missing = [need for need in entry.needs if not given[need]]
    if missing:
        raise ValueError(f"target {name!r} needs {' and '.join(missing)} (the training set and the resolved "
                         f"run config) to be built: create_target({name!r}, params, train_set=..., cfg=...)")
    return load(entry.build)(params, train_set, cfg, cache_dir, torch.device(device))


# ----------------------------------------------------------------------------- the targets
def _enough_patches_for_the_codebook(params: dict) -> None:
    if params["fit_patches"] < params["vocab_size"]:
        raise ConfigError("pretrain.target_params.fit_patches",
                          f"{params['fit_patches']} is fewer than vocab_size {params['vocab_size']}; "
                          f"allowed: >= vocab_size")


def pca_fits(params: dict, patch_size: int, channels: int) -> None:
    """At most as many components as a patch has numbers (patch_size² × channels)."""
    patch_dim = patch_size ** 2 * channels
    if params["components"] > patch_dim:
        raise ConfigError("pretrain.target_params.components",
                          f"{params['components']} exceeds the patch dimension {patch_dim} "
                          f"({patch_size}x{patch_size} px x {channels} channels); allowed: 1..{patch_dim}")


def default_hog_cell(patch_size: int) -> int:
    """Half the patch (the largest divisor of it up to half), at least 1."""
    return next((d for d in range(patch_size // 2, 0, -1) if patch_size % d == 0), 1)


def hog_fits(params: dict, patch_size: int, channels: int = 0) -> None:
    """A cell (null: default_hog_cell) divides the patch."""
    cell = params["cell"] or default_hog_cell(patch_size)
    if patch_size % cell:
        divisors = ", ".join(str(d) for d in range(1, patch_size + 1) if patch_size % d == 0)
        raise ConfigError("pretrain.target_params.cell", f"{cell} does not divide model.patch_size {patch_size}; "
                                                         f"allowed: null or one of {divisors}")


def dalle_encoder_path_is_set(params: dict) -> None:
    """dalle_token has no default tokenizer: encoder_path must name DALL-E's encoder.pkl on disk."""
    path = params.get("encoder_path")
    if path is None or not path.strip():
        raise ConfigError("pretrain.target_params.encoder_path",
                          f"{'is not set' if path is None else 'is empty'}; allowed: the path of DALL-E's "
                          "encoder.pkl on disk (never downloaded), e.g. target_params: {encoder_path: "
                          "/path/to/encoder.pkl}")


def dalle_channels(params: dict, patch_size: int, channels: int) -> None:
    """DALL-E's encoder reads RGB: 3-channel images, or 1-channel ones repeated to 3."""
    if channels not in (1, 3):
        raise ConfigError("pretrain.target", f"dalle_token needs 1- or 3-channel images, the dataset has "
                                             f"{channels}; allowed: a dataset of 1 or 3 channels")


POSITIVE = dict(low=0.0, high=math.inf, open_interval=True)

register_target("pixel", "bench.targets.pixels:build_pixel", doc="the patch's pixels (MAE Table 1d)")
register_target("norm_pixel", "bench.targets.pixels:build_norm_pixel",
                doc="the patch's pixels normalised by its own mean and std (MAE)")
register_target("pca", "bench.targets.pca:build_pca", {
    "components": Option(96, int, low=1, help="principal components kept (MAE: 96); at most patch_size² × channels"),
    "fit_patches": Option(100_000, int, low=1, help="training patches the basis is fitted on"),
}, needs=("train_set", "cfg"), doc="the patch's top principal components (MAE Table 1d)", fits=pca_fits)
register_target("dvae_token", "bench.targets.tokenizer:build_dvae_token", {  # trains in seconds on a CPU, 4 px patches
    "vocab_size": Option(512, int, low=2, help="codebook entries = classes the decoder predicts"),
    "hidden": Option(128, int, low=1, help="width of the MLP encoder and decoder (2 hidden layers each)"),
    "code_dim": Option(32, int, low=1, help="width of a code"),
    "epochs": Option(5, int, low=1, help="passes over the fit patches"),
    "batch_size": Option(256, int, low=1, help="patches per step"),
    "lr": Option(1e-3, float, **POSITIVE, help="Adam's learning rate"),
    "fit_patches": Option(100_000, int, low=1, help="training patches the tokenizer is trained on"),
    "seed": Option(0, int, low=0, high=2 ** 32 - 1, help="seeds the tokenizer's weights, codebook and data order"),
}, needs=("train_set", "cfg"), check=_enough_patches_for_the_codebook,
    doc="the patch's token in a per-patch VQ-VAE trained once (MAE Table 1d, BEiT)")
register_target("dalle_token", "bench.targets.dalle:build_dalle_token", {
    "encoder_path": Option(None, str, nullable=True,
                           help="the path of DALL-E's encoder.pkl on disk (never downloaded); required"),
    "vocab_size": Option(8192, int, low=2, help="DALL-E's vocabulary; must match the encoder's output channels"),
}, needs=("train_set", "cfg"), check=dalle_encoder_path_is_set, fits=dalle_channels,
    doc="BEiT's tokenizer: DALL-E's dVAE encoder from a local encoder.pkl (never downloaded)")
register_target("hog", "bench.targets.hog:build_hog", {
    "bins": Option(9, int, low=1, help="unsigned orientation bins (MaskFeat: 9)"),
    "cell": Option(None, int, low=1, nullable=True, help="cell side in px; null = half the patch"),
}, needs=("cfg",), doc="histograms of oriented gradients per patch (MaskFeat)", fits=hog_fits)
