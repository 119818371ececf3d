"""What fitted targets (pca, dvae_token) are fitted on — `training_patches` — and what they are
cached under: `fit_key`, whose digest names the cache entry (bench.core.cache, kind "targets").
Changing fit_key's content or FIT_VERSION invalidates every fitted target already cached."""
from __future__ import annotations

import math

import torch

from bench.core.patches import patchify
from bench.data import is_default_identity
from bench.data.augment import augment, normalize

FIT_VERSION = 1          # part of every fitted target's cache key: bump when a fit changes
FIT_READ_BATCH = 512     # images per batch while collecting training patches


def training_patches(train_set, cfg: dict, count: int, device, seed: int = 0) -> torch.Tensor:
    """`count` patches (count × patch_dim, on `device`) of the images the model sees — normalised,
    un-augmented training images at data.img_size — or all there are if fewer: every patch of
    the first ceil(count / L) images in a seeded random order, then a random `count` of them."""
    img_size, patch_size = cfg["data"]["img_size"], cfg["model"]["patch_size"]
    per_image = (img_size // patch_size) ** 2
    n_images = min(len(train_set), math.ceil(count / per_image))
    chunks, seen = [], 0
    for images, _ in train_set.batches(min(FIT_READ_BATCH, n_images), shuffle=True, seed=seed, device=device):
        x = normalize(augment(images, "none", img_size, None), train_set.mean, train_set.std)
        chunks.append(patchify(x, patch_size).flatten(0, 1))
        seen += images.shape[0]
        if seen >= n_images:
            break
    patches = torch.cat(chunks)[:n_images * per_image]
    keep = torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(seed))[:count]
    return patches[keep.to(patches.device)]


def fit_key(name: str, params: dict, cfg: dict, channels: int) -> dict:
    """What a fitted target depends on — its cache key. Not the augmentation (the fit sees
    un-augmented images), the held-out split, the run's seed or anything else of the run. The
    data's identity (`data.identity`) is in it, as in the run id: left out when null or the
    dataset's default identity (keys from before it existed stay), there otherwise — so a target
    fitted on other files is never reused. (The identity covers both splits: other held-out files
    refit, which costs time, never correctness.)"""
    data = {k: v for k, v in cfg["data"].items() if k not in ("augmentation", "test_limit")}
    if is_default_identity(data.get("name"), data.get("identity")):
        data.pop("identity", None)
    return {"target": name, "params": params, "data": data, "patch_size": cfg["model"]["patch_size"],
            "img_size": cfg["data"]["img_size"], "channels": channels, "version": FIT_VERSION}
