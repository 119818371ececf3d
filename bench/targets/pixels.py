"""Pixel targets: the patch's pixels (`pixel`) or the pixels normalised by the patch's own mean
and std (`norm_pixel`, MAE's norm_pix_loss); and the losses of every float target: `masked_mse`
(their own), and `masked_l1` / `masked_smooth_l1`, which `with_loss` puts in its place when a
config asks (pretrain.loss: SimMIM's L1, VideoMAE Table 1f's smooth L1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(per_patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE averaged over the masked patches."""
    return _masked_mean(((pred - target) ** 2).mean(dim=-1), mask)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch mean absolute error averaged over the masked patches (SimMIM's loss: the sum over
    masked pixels / their number / channels is the same mean)."""
    return _masked_mean((pred - target).abs().mean(dim=-1), mask)


def masked_smooth_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch smooth L1 (Huber, beta 1) averaged over the masked patches."""
    return _masked_mean(F.smooth_l1_loss(pred, target, reduction="none").mean(dim=-1), mask)


LOSSES = {"mse": masked_mse, "l1": masked_l1, "smooth_l1": masked_smooth_l1}  # pretrain.loss


class WithLoss:
    """A float target scored by another loss: the same targets and head width."""

    def __init__(self, target, loss: str):
        self.target, self.loss_name, self._loss = target, loss, LOSSES[loss]

    def out_dim(self, patch_dim: int) -> int:
        return self.target.out_dim(patch_dim)

    def targets(self, imgs: torch.Tensor, model) -> torch.Tensor:
        return self.target.targets(imgs, model)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._loss(pred, target, mask)


def with_loss(target, loss: str | None):
    """`target` scored by pretrain.loss (null: its own loss)."""
    return target if loss is None else WithLoss(target, loss)


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
