"""Helpers the method tests share (BEiT/SimMIM, SimMIM's Swin, SparK): a seeded random mask with an
exact count, and a target whose per-patch values the test gives."""
import torch


def mask_of(batch: int = 4, length: int = 16, masked: int = 6, seed: int = 0) -> torch.Tensor:
    """B×L bool, exactly `masked` True per row, drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.rand(batch, length, generator=gen).argsort(dim=1)[:, :masked]
    return torch.zeros(batch, length, dtype=torch.bool).scatter_(1, ids, True)


class FixedTargets:
    """A float target whose per-patch values are given (B×L×D), scored by `loss(pred, target, mask)`
    (e.g. bench.targets.pixels.masked_l1)."""

    def __init__(self, values: torch.Tensor, loss):
        self.values, self._loss = values, loss

    def out_dim(self, patch_dim: int) -> int:
        return self.values.shape[-1]

    def targets(self, imgs, model) -> torch.Tensor:
        return self.values

    def loss(self, pred, target, mask):
        return self._loss(pred, target, mask)
