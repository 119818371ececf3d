"""The augmentation presets registered in bench.data (MAE Table 1e), batched on the device the
model runs on: none, crop_fixed, crop_rand (MAE's default), crop_color.

Each sample's crop is an affine map, so a whole batch is cropped, flipped and resized by one
`affine_grid` + `grid_sample` (bilinear) — no per-sample Python loop, no CPU data workers.
Randomness comes only from the torch.Generator passed in.

Clips (B×C×T×H×W, bench.data.video) draw what a batch of B images draws — the same numbers in
the same order — and every frame of a clip gets its clip's crop, flip and color jitter: the
frames are folded into the channels for the crop, into the batch for the jitter (whose contrast
is about each frame's mean grey, as torchvision's on videos). Images behave as before.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bench.data import is_augmentation, list_augmentations

RRC_SCALE = (0.2, 1.0)     # MAE's RandomResizedCrop(scale=(0.2, 1.0))
RRC_RATIO = (3 / 4, 4 / 3)
FIXED_CROP = 7 / 8         # crop side / image side for crop_fixed (224 / 256)
JITTER = 0.4


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_resized_boxes(n: int, generator: torch.Generator, device, attempts: int = 10) -> torch.Tensor:
    """(width, height) of RandomResizedCrop boxes as fractions of the side, torchvision's algorithm.

    Up to `attempts` draws of (area, log-aspect) per sample; the first that fits is used and a
    sample where none fits takes the whole image.
    """
    area = _uniform(n * attempts, *RRC_SCALE, generator, device).view(attempts, n)
    log_ratio = _uniform(n * attempts, math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1]), generator, device)
    ratio = log_ratio.exp().view(attempts, n)
    w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.float().argmax(dim=0)                      # first attempt that fits (0 if none)
    w = w.gather(0, first[None]).squeeze(0)
    h = h.gather(0, first[None]).squeeze(0)
    none_fit = ~fits.any(dim=0)
    return torch.where(none_fit, torch.ones_like(w), w), torch.where(none_fit, torch.ones_like(h), h)


def crop_params(n: int, preset: str, generator: torch.Generator, device) -> torch.Tensor:
    """n×2×3 affine matrices mapping the output square onto each sample's crop box."""
    if preset == "none":
        w = h = torch.ones(n, device=device)
        flip = torch.ones(n, device=device)
    else:
        if preset == "crop_fixed":
            w = h = torch.full((n,), FIXED_CROP, device=device)
        else:
            w, h = random_resized_boxes(n, generator, device)
        flip = torch.where(torch.rand(n, generator=generator, device=device) < 0.5, -1.0, 1.0)
    # box centre, uniform over the positions where the box fits; in normalised [-1, 1] coordinates
    cx = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=generator, device=device) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    return theta


def color_jitter(x: torch.Tensor, generator: torch.Generator, share: tuple[int, slice] | None = None) -> torch.Tensor:
    """Brightness, contrast and saturation, each a factor uniform in [1-0.4, 1+0.4] per sample
    (per clip of B×C×T×H×W clips: the same factors for all its frames). `share`: x is rows
    `rows` of a batch of `n` (n, rows): the factors are drawn for the n and x gets its rows'."""
    n = x.shape[0] if share is None else share[0]
    factors = _uniform(3 * n, 1 - JITTER, 1 + JITTER, generator, x.device).view(3, n, 1, 1, 1)
    if share is not None:
        factors = factors[:, share[1]]
    if x.dim() == 5:  # clips: frames into the batch, each frame with its clip's factors
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        out = _jitter(frames, factors.repeat_interleave(t, dim=1))
        return out.view(b, t, c, h, w).transpose(1, 2).contiguous()
    return _jitter(x, factors)


def _jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    x = (x * factors[0]).clamp(0, 1)
    gray = x.mean(dim=1, keepdim=True) if x.shape[1] == 1 else \
        (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (gray.mean(dim=(2, 3), keepdim=True) + factors[1] * (x - gray.mean(dim=(2, 3), keepdim=True))).clamp(0, 1)
    if x.shape[1] == 3:
        x = (gray + factors[2] * (x - gray)).clamp(0, 1)
    return x


def augment(images: torch.Tensor, preset: str, out_size: int, generator: torch.Generator | None,
            share: tuple[int, slice] | None = None, cropped: bool = False) -> torch.Tensor:
    """uint8 B×C×H×W → float B×C×out×out in [0, 1], augmented by `preset`; clips B×C×T×H×W →
    B×C×T×out×out, every frame of a clip augmented alike.

    `share` = (n, rows): `images` are rows `rows` of a batch of n (a DDP rank's share, bench.data.shards).
    The random numbers are drawn for all n, so each row gets what it gets in the whole batch and the
    ranks' shares together are the single-process batch; only the share's pixels are computed.
    `cropped`: the loader's workers already cropped and flipped the images (an ImageFolder's
    `crops_in_loader`): only crop_color's jitter is left to do here."""
    if not is_augmentation(preset):
        raise ValueError(f"augmentation {preset!r} is not one of {', '.join(list_augmentations())}")
    x = images.float().div_(255)
    clips = x.shape if x.dim() == 5 else None
    if clips is not None:  # frames into channels: one crop per clip
        x = x.reshape(clips[0], clips[1] * clips[2], clips[3], clips[4])
    if preset == "none" or cropped:
        if x.shape[-1] != out_size or x.shape[-2] != out_size:
            x = F.interpolate(x, size=(out_size, out_size), mode="bilinear", align_corners=False, antialias=True)
    else:
        theta = crop_params(x.shape[0] if share is None else share[0], preset, generator, x.device)
        theta = theta if share is None else theta[share[1]]
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if clips is not None:
        x = x.view(clips[0], clips[1], clips[2], out_size, out_size)
    if preset == "crop_color":
        x = color_jitter(x, generator, share)
    return x


_STATS_CACHE: dict = {}


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel (dimension 1) of images B×C×H×W or clips B×C×T×H×W."""
    key = (tuple(mean), tuple(std), str(x.device), x.dim())
    if key not in _STATS_CACHE:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        _STATS_CACHE[key] = (torch.tensor(mean, device=x.device).view(shape),
                             torch.tensor(std, device=x.device).view(shape))
    m, s = _STATS_CACHE[key]
    return (x - m) / s
