"""Strategies built from other strategies (they cannot contain each other).

    tube   VideoMAE (Tong et al., 2022): one spatial mask, of any strategy, for every frame
           (`generate` repeats it over the frames).
    frame  VideoMAE Table 1b "frame": whole frames, a random subset of the clip's frames.
    multi  per sample, a strategy drawn with probability proportional to its weight.
"""
from __future__ import annotations

import torch

from bench.masking import generate


def tube_masking(batch, grid_hw, ratio, params, generator, device):
    """The spatial mask of one frame; `generate` repeats it over the frames."""
    return generate(params["spatial"], batch, grid_hw, ratio, params["spatial_params"], generator, device)


def multi_masking(batch, grid_hw, ratio, params, generator, device):
    """Per sample, one strategy drawn with probability proportional to its weight."""
    names = list(params["weights"])
    weights = torch.tensor([float(params["weights"][n]) for n in names], device=device)
    choice = torch.multinomial(weights, batch, replacement=True, generator=generator)
    mask = torch.zeros(batch, grid_hw[0] * grid_hw[1], dtype=torch.bool, device=device)
    for i, name in enumerate(names):
        rows = (choice == i).nonzero().squeeze(1)
        if len(rows):
            mask[rows] = generate(name, len(rows), grid_hw, ratio, params["params"][name], generator, device)
    return mask


def frame_masking(batch, grid_hw, ratio, params, generator, device):
    """Whole frames: `generate` calls it on the T×1 grid of a clip's frames (num_masked(T) of them
    masked, uniformly at random) and spreads each over the frame's tokens."""
    return generate("random", batch, grid_hw, ratio, {}, generator, device)
