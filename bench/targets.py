"""Reconstruction targets: one registry of what the MAE decoder predicts for each masked patch.

    pixel       the (normalised) pixels of the patch, MSE (MAE Table 1d "pixel w/o norm")
    norm_pixel  the pixels normalised by the patch's own mean and std (MAE's norm_pix_loss)

A target maps patchified images (B×L×P) to per-patch targets and scores the decoder's
prediction on the masked patches only.
"""
from __future__ import annotations

import torch


class PixelTarget:
    """Predict the patch's pixels; loss = per-patch MSE averaged over masked patches."""

    def __init__(self, normalize_patch: bool):
        self.normalize_patch = normalize_patch

    def out_dim(self, patch_dim: int) -> int:
        return patch_dim

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        if not self.normalize_patch:
            return patches
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        return (patches - mean) / (var + 1.0e-6) ** 0.5

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_patch = ((pred - target) ** 2).mean(dim=-1)  # B×L
        mask = mask.to(per_patch.dtype)
        return (per_patch * mask).sum() / mask.sum()


TARGETS = {
    "pixel": lambda: PixelTarget(normalize_patch=False),
    "norm_pixel": lambda: PixelTarget(normalize_patch=True),
}


def resolve_params(name: str, params: dict) -> dict:
    """The target's parameters with defaults filled in (the pixel targets have none)."""
    from bench.config import ConfigError
    if params:
        raise ConfigError(f"pretrain.target_params.{next(iter(params))}", f"unknown key; {name} takes no parameters")
    return {}


def build_target(name: str):
    return TARGETS[name]()
