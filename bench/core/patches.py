"""Images ↔ patches, MAE's layout: B×C×H×W ↔ B×L×(p·p·C), patches row-major, pixels (p, q, c)."""
from __future__ import annotations

import torch
from einops import rearrange


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B×C×H×W → B×L×(p·p·C)."""
    p = patch_size
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """B×L×(p·p·C) → B×C×H×W, for a square grid of patches."""
    p, side = patch_size, int(round(x.shape[1] ** 0.5))
    return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=side, w=side, p=p, q=p, c=channels)
