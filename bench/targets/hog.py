"""The `hog` target (MaskFeat): per patch, histograms of oriented gradients — `bins` unsigned
orientations summed over cells of `cell` px, one set per channel, L2-normalised; per-patch MSE."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from bench.targets import default_hog_cell, hog_fits
from bench.targets.pixels import masked_mse


def hog_features(imgs: torch.Tensor, patch_size: int, cell: int, bins: int) -> torch.Tensor:
    """MaskFeat's HOG per patch: B×C×H×W → B×L×(C·(patch/cell)²·bins), each patch's vector L2-normalised.

    Gradients by [-1, 0, 1] along x and y on each channel of the whole image (reflect-padded at
    its border), unsigned orientation atan2(gy, gx) mod π in `bins` equal bins (bin 0 = a
    horizontal gradient, i.e. a vertical edge), magnitudes summed over cell×cell pixels.
    """
    padded = F.pad(imgs, (1, 1, 1, 1), mode="reflect")
    gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    magnitude = torch.sqrt(gx ** 2 + gy ** 2)
    orientation = torch.remainder(torch.atan2(gy, gx), math.pi)
    bin_of = (orientation * (bins / math.pi)).long().clamp_(max=bins - 1)
    per_bin = torch.stack([F.avg_pool2d(magnitude * (bin_of == k), cell) * cell ** 2 for k in range(bins)], dim=2)
    per_cell = patch_size // cell  # B×C×bins×(H/cell)×(W/cell) → patches
    features = rearrange(per_bin, "b c k (h y) (w x) -> b (h w) (c y x k)", y=per_cell, x=per_cell)
    return F.normalize(features, dim=-1)


default_cell = default_hog_cell  # half the patch (the largest divisor of it up to half), at least 1


class HogTarget:
    """Predict the patch's histograms of oriented gradients (hog_features); per-patch MSE."""

    def __init__(self, bins: int, cell: int, patch_size: int):
        self.bins, self.cell, self.patch_size = bins, cell, patch_size

    def out_dim(self, patch_dim: int) -> int:
        channels = patch_dim // self.patch_size ** 2
        return channels * (self.patch_size // self.cell) ** 2 * self.bins

    def targets(self, imgs: torch.Tensor, model) -> torch.Tensor:
        return hog_features(imgs, self.patch_size, self.cell, self.bins)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(pred, target, mask)


def build_hog(params: dict, train_set, cfg: dict, cache_dir, device) -> HogTarget:
    patch_size = cfg["model"]["patch_size"]
    hog_fits(params, patch_size)
    cell = params["cell"] or default_cell(patch_size)
    return HogTarget(params["bins"], cell, patch_size)
