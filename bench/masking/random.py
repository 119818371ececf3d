"""Uniformly random masking, at the patch size or at a coarser one.

    random  MAE (He et al., 2021): a uniformly random subset of the patches per sample.
    coarse  SimMIM (Xie et al., 2021): random masking of `scale`×`scale`-patch cells (SimMIM's
            mask-patch size larger than the model's patch size), upsampled to patches.
    none    nothing masked, whatever the ratio (BEiT Table 4 "− masking", with the loss on all).
"""
from __future__ import annotations

import math

import torch

from bench.masking.counts import exact_count
from bench.masking.ratios import num_masked


def random_masking(batch, grid_hw, ratio, params, generator, device):
    """Mask the num_masked patches of highest noise: the argsort of uniform noise per sample."""
    length = grid_hw[0] * grid_hw[1]
    noise = torch.rand(batch, length, generator=generator, device=device)
    masked_ids = noise.argsort(dim=1)[:, length - num_masked(length, ratio):]
    return torch.zeros(batch, length, dtype=torch.bool, device=device).scatter_(1, masked_ids, True)


def coarse_masking(batch, grid_hw, ratio, params, generator, device):
    """SimMIM: random masking on a grid of `scale`×`scale`-patch cells, upsampled to patches."""
    height, width = grid_hw
    scale = params["scale"]
    coarse_hw = (math.ceil(height / scale), math.ceil(width / scale))
    cells = random_masking(batch, coarse_hw, ratio, {}, generator, device).view(batch, *coarse_hw)
    fine = cells.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)[:, :height, :width]
    return exact_count(fine.flatten(1), num_masked(height * width, ratio), generator)


def no_masking(batch, grid_hw, ratio, params, generator, device):
    """Nothing masked: the encoder sees every patch (the loss must then score all of them)."""
    return torch.zeros(batch, grid_hw[0] * grid_hw[1], dtype=torch.bool, device=device)
