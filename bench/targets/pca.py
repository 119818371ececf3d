"""The `pca` target (MAE Table 1d "PCA"): each patch projected on the top `components` principal
directions of the training patches, fitted once and cached; per-patch MSE on masked patches."""
from __future__ import annotations

import torch

from bench.core import cache
from bench.core.hashing import digest
from bench.core.patches import patchify
from bench.targets import pca_fits
from bench.targets.fit import fit_key, training_patches
from bench.targets.pixels import masked_mse


def fit_pca(patches: torch.Tensor, components: int) -> dict:
    """Mean and top `components` principal directions (patch_dim × components, orthonormal columns,
    by decreasing variance; each column's largest entry positive) of the rows of `patches`."""
    x = patches.double()
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(x.shape[0] - 1, 1)
    variances, directions = torch.linalg.eigh(covariance)  # ascending
    order = variances.argsort(descending=True)[:components]
    basis = directions[:, order]
    basis = basis * torch.sign(basis.gather(0, basis.abs().argmax(dim=0, keepdim=True)))
    kept = variances[order].clamp(min=0)
    return {"mean": mean.float().cpu(), "basis": basis.float().cpu(), "variance": kept.float().cpu(),
            "explained": (kept.sum() / variances.clamp(min=0).sum().clamp(min=1e-12)).item(),
            "fit_patches": x.shape[0]}


class PcaTarget:
    """Predict (patch − mean) @ basis, the patch's top principal components; per-patch MSE."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, patch_size: int, stats: dict | None = None):
        self.mean, self.basis, self.patch_size, self.stats = mean, basis, patch_size, stats or {}

    def out_dim(self, patch_dim: int) -> int:
        return self.basis.shape[1]

    def targets(self, imgs: torch.Tensor, model) -> torch.Tensor:
        return (patchify(imgs, self.patch_size) - self.mean) @ self.basis

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mse(pred, target, mask)


def build_pca(params: dict, train_set, cfg: dict, cache_dir, device) -> PcaTarget:
    patch_size, channels = cfg["model"]["patch_size"], train_set.channels
    pca_fits(params, patch_size, channels)
    fitted = cache.get_or_build(
        cache_dir, "targets", digest(fit_key("pca", params, cfg, channels)),
        lambda: fit_pca(training_patches(train_set, cfg, params["fit_patches"], device), params["components"]))
    stats = {"explained_variance": fitted["explained"], "fit_patches": fitted["fit_patches"]}
    return PcaTarget(fitted["mean"].to(device), fitted["basis"].to(device), patch_size, stats)
