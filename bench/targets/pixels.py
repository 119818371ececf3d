"""Pixel targets: the patch's pixels (`pixel`) or the pixels normalised by the patch's own mean
and std (`norm_pixel`, MAE's norm_pix_loss); and `masked_mse`, the loss of every float target."""
from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE averaged over the masked patches."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # B×L
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


class PixelTarget:
    """Predict the patch's pixels; loss = per-patch MSE averaged over masked patches."""

    def __init__(self, normalize_patch: bool):
        self.normalize_patch = normalize_patch

    def out_dim(self, patch_dim: int) -> int:
        return patch_dim

    def targets(self, imgs: torch.Tensor, model) -> torch.Tensor:
        return self(model.patchify(imgs))

    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        if not self.normalize_patch:
            return patches
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True)
        return (patches - mean) / (var + 1.0e-6) ** 0.5

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(pred, target, mask)


def build_pixel(params: dict, train_set, cfg: dict, cache_dir, device) -> PixelTarget:
    return PixelTarget(normalize_patch=False)


def build_norm_pixel(params: dict, train_set, cfg: dict, cache_dir, device) -> PixelTarget:
    return PixelTarget(normalize_patch=True)
