"""Masking strategies: one registry, batched tensor code on the model's device.

Every strategy returns a B×L boolean mask (True = masked, L = grid height × width, row-major)
with exactly `num_masked(L, ratio)` masked patches in every sample, so MAE's gather of the
visible tokens works for all of them. Randomness comes only from the torch.Generator passed
in: the same seed gives the same masks.

    random  MAE: a uniformly random subset per sample (argsort of noise).
    block   BEiT: rectangles of random area and aspect ratio until the target count.
    grid    MAE Table 1f: a regular pattern keeping one patch of every k×k cell.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from bench.config import ConfigError


def num_masked(num_patches: int, ratio: float) -> int:
    """round(ratio × L), kept within [1, L-1] so no sample is fully masked or fully visible."""
    return min(max(int(math.floor(ratio * num_patches + 0.5)), 1), num_patches - 1)


@dataclass(frozen=True)
class Strategy:
    generate: Callable  # (batch, grid_hw, ratio, params, generator, device) -> bool B×L
    defaults: dict = field(default_factory=dict)
    doc: str = ""


def exact_count(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Trim or top up each row of `mask` at random to exactly `count` True entries.

    Masked positions score in [1, 2), unmasked ones in [0, 1): the top `count` scores keep
    every already-masked patch first, then fill with random unmasked ones (or, when a row
    has too many, keep a random subset of its masked ones).
    """
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    keep = (mask.float() + noise).topk(count, dim=1).indices
    return torch.zeros_like(mask).scatter_(1, keep, True)


def random_masking(batch, grid_hw, ratio, params, generator, device):
    length = grid_hw[0] * grid_hw[1]
    noise = torch.rand(batch, length, generator=generator, device=device)
    masked_ids = noise.argsort(dim=1)[:, length - num_masked(length, ratio):]
    return torch.zeros(batch, length, dtype=torch.bool, device=device).scatter_(1, masked_ids, True)


def block_masking(batch, grid_hw, ratio, params, generator, device):
    """BEiT's block-wise masking, one rectangle per round for the whole batch.

    Per sample and round (as BEiT's `_mask`): up to `attempts` candidate rectangles with area
    uniform in [min_patches, max_mask] (max_mask = what is still to be masked, capped by
    max_patches) and log-uniform aspect ratio; the first that adds between 1 and max_mask new
    patches is taken. A sample stops when it reaches the target or no attempt fits. The few
    patches still missing then are topped up at random (exact_count).
    """
    height, width = grid_hw
    target = num_masked(height * width, ratio)
    min_patches = params["min_patches"]
    max_patches = params["max_patches"] or target
    log_lo, log_hi = math.log(params["min_aspect"]), math.log(params["max_aspect"] or 1 / params["min_aspect"])
    tries = params["attempts"]

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    rows = torch.arange(height, device=device).view(1, 1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, 1, width)
    mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
    count = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    picked = torch.arange(batch, device=device)
    while bool(active.any()):
        max_mask = (target - count).clamp(max=max_patches).unsqueeze(1).float()  # B×1
        area = min_patches + (max_mask - min_patches) * uniform(batch, tries)
        aspect = torch.exp(log_lo + (log_hi - log_lo) * uniform(batch, tries))
        h = torch.sqrt(area * aspect).round().long()
        w = torch.sqrt(area / aspect).round().long()
        fits = (h < height) & (w < width)
        top = (uniform(batch, tries) * (height - h + 1).clamp(min=1)).long()
        left = (uniform(batch, tries) * (width - w + 1).clamp(min=1)).long()
        rect = ((rows >= top[..., None, None]) & (rows < (top + h)[..., None, None])
                & (cols >= left[..., None, None]) & (cols < (left + w)[..., None, None]))  # B×A×H×W
        new = (rect & ~mask.unsqueeze(1)).sum(dim=(2, 3))
        valid = fits & (new > 0) & (new <= max_mask.long()) & active.unsqueeze(1)
        found = valid.any(dim=1)
        first = valid.float().argmax(dim=1)
        mask |= rect[picked, first] & found[:, None, None]
        count += new[picked, first] * found
        active &= found & (count < target)
    return exact_count(mask.flatten(1), target, generator)


def grid_masking(batch, grid_hw, ratio, params, generator, device):
    """Keep one patch of every k×k cell (k = round(1/sqrt(1-ratio)); 75% → k=2)."""
    height, width = grid_hw
    k = max(2, round(1 / math.sqrt(1 - ratio)))
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    if params["random_offset"]:
        offset = (torch.rand(batch, 2, generator=generator, device=device) * k).long()
    else:
        offset = torch.zeros(batch, 2, dtype=torch.long, device=device)
    keep = ((rows - offset[:, 0, None, None]) % k == 0) & ((cols - offset[:, 1, None, None]) % k == 0)
    return exact_count((~keep).flatten(1), num_masked(height * width, ratio), generator)


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(random_masking, {}, "uniform random subset per sample (MAE)"),
    "block": Strategy(block_masking, {"min_patches": 4, "max_patches": None, "min_aspect": 0.3,
                                      "max_aspect": None, "attempts": 10},
                      "rectangles of random area and aspect ratio (BEiT)"),
    "grid": Strategy(grid_masking, {"random_offset": False}, "keep one patch of every k×k cell (MAE Table 1f)"),
}


def resolve_params(name: str, params: dict, ratio: float, grid_hw: tuple[int, int]) -> dict:
    """Check a strategy's parameters and fill in its defaults (raises one-line ConfigError)."""
    if name not in STRATEGIES:
        raise ConfigError("masking.strategy", f"{name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    defaults = STRATEGIES[name].defaults
    params = dict(params or {})
    for key in params:
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ConfigError(f"masking.params.{key}", f"unknown parameter of strategy {name!r}; allowed: {allowed}")
    out = {**defaults, **params}
    for key, value in out.items():
        default = defaults[key]
        kind = type(default) if default is not None else (int if key.endswith("patches") else float)
        if value is None and default is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise ConfigError(f"masking.params.{key}", f"{value!r} has the wrong type; allowed: {kind.__name__}")
        out[key] = value
    if name == "block":
        if out["min_patches"] < 1:
            raise ConfigError("masking.params.min_patches", f"{out['min_patches']} is out of range; allowed: >= 1")
        if not 0 < out["min_aspect"] <= 1:
            raise ConfigError("masking.params.min_aspect", f"{out['min_aspect']} is out of range; allowed: 0 < x <= 1")
        if out["attempts"] < 1:
            raise ConfigError("masking.params.attempts", f"{out['attempts']} is out of range; allowed: >= 1")
    return out


def generate(name: str, batch: int, grid_hw: tuple[int, int], ratio: float, params: dict,
             generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
    """A B×L boolean mask (True = masked) with exactly num_masked(L, ratio) True per row."""
    return STRATEGIES[name].generate(batch, tuple(grid_hw), ratio, params, generator, torch.device(device))
