"""Reconstruction targets: one registry of what the MAE decoder predicts for each masked patch.

    pixel       the (normalised) pixels of the patch, MSE (MAE Table 1d "pixel w/o norm")
    norm_pixel  the pixels normalised by the patch's own mean and std (MAE's norm_pix_loss)
    pca         the patch projected on the top `components` principal components of the training
                patches (MAE Table 1d "PCA": 96 of them), MSE
    dvae_token  the id of the patch's code in a small per-patch VQ-VAE trained on the training set
                (MAE Table 1d "dVAE token", BEiT's target), cross-entropy over `vocab_size` ids
    hog         MaskFeat's histograms of oriented gradients: per patch, `bins` unsigned
                orientations summed over cells of `cell` px, one set per channel, L2-normalised; MSE

A target turns the normalised images the model sees (B×C×H×W) into per-patch targets with
`targets(imgs, model)` — B×L×D floats, or B×L token ids — and scores the decoder's prediction
on the masked patches only with `loss(pred, targets, mask)`; `out_dim(patch_dim)` is the width
of the decoder's head. pca and dvae_token are fitted once on the normalised, un-augmented
training images and kept in the shared cache (bench.core.cache, kind "targets") under a hash of
everything the fit depends on, so runs that differ elsewhere reuse them.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from tqdm.auto import tqdm

from bench.core import cache
from bench.core.hashing import digest
from bench.data.augment import augment, normalize
from bench.core.errors import ConfigError
from bench.core.options import Option

FIT_VERSION = 1          # part of every fitted target's cache key: bump when a fit changes
FIT_READ_BATCH = 512     # images per batch while collecting training patches
COMMITMENT = 0.25        # VQ-VAE's commitment weight (beta)
EMA_DECAY = 0.99         # codebook EMA (VQ-VAE-2)
KMEANS_ITERS = 10        # Lloyd iterations of the codebook's k-means initialisation
KMEANS_SAMPLE = 20       # k-means initialisation on vocab_size × this many patches
TOKEN_CHUNK = 65536      # patches per chunk when looking up their nearest codes


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B×C×H×W → B×L×(p·p·C), MAE's layout (the same as MaskedAutoencoderViT.patchify)."""
    p = patch_size
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-patch MSE averaged over the masked patches."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)  # B×L
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


# ----------------------------------------------------------------------------- pixels
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


# ----------------------------------------------------------------------------- training patches
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
    un-augmented images), the held-out split, the run's seed or anything else of the run."""
    data = {k: v for k, v in cfg["data"].items() if k not in ("augmentation", "test_limit")}
    return {"target": name, "params": params, "data": data, "patch_size": cfg["model"]["patch_size"],
            "img_size": cfg["data"]["img_size"], "channels": channels, "version": FIT_VERSION}


# ----------------------------------------------------------------------------- pca
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
    patch_dim = patch_size ** 2 * channels
    if params["components"] > patch_dim:
        raise ConfigError("pretrain.target_params.components",
                          f"{params['components']} exceeds the patch dimension {patch_dim} "
                          f"({patch_size}x{patch_size} px x {channels} channels); allowed: 1..{patch_dim}")
    fitted = cache.get_or_build(
        cache_dir, "targets", digest(fit_key("pca", params, cfg, channels)),
        lambda: fit_pca(training_patches(train_set, cfg, params["fit_patches"], device), params["components"]))
    stats = {"explained_variance": fitted["explained"], "fit_patches": fitted["fit_patches"]}
    return PcaTarget(fitted["mean"].to(device), fitted["basis"].to(device), patch_size, stats)


# ----------------------------------------------------------------------------- dvae_token
class PatchTokenizer(nn.Module):
    """A per-patch VQ-VAE: MLP encoder → nearest of `vocab_size` codes → MLP decoder."""

    def __init__(self, patch_dim: int, vocab_size: int, hidden: int, code_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(patch_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                     nn.Linear(hidden, code_dim))
        self.decoder = nn.Sequential(nn.Linear(code_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                     nn.Linear(hidden, patch_dim))
        self.register_buffer("codebook", torch.zeros(vocab_size, code_dim))  # set by EMA, not by gradients

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """The id of each row's nearest code (N×code_dim → N long), in chunks of TOKEN_CHUNK rows."""
        code_norms = (self.codebook ** 2).sum(dim=1)
        return torch.cat([(code_norms - 2 * chunk @ self.codebook.T).argmin(dim=1) for chunk in z.split(TOKEN_CHUNK)])

    def tokens(self, patches: torch.Tensor) -> torch.Tensor:
        return self.nearest(self.encoder(patches))

    def reconstruct(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.codebook[ids])


def kmeans(points: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """k centroids of `points` by Lloyd's algorithm from k random points (an empty cluster keeps its centroid)."""
    centroids = points[torch.randperm(points.shape[0], generator=generator)[:k].to(points.device)].clone()
    for _ in range(iterations):
        ids = ((centroids ** 2).sum(dim=1) - 2 * points @ centroids.T).argmin(dim=1)
        counts = torch.bincount(ids, minlength=k).to(points.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, ids, points)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids


@contextmanager
def one_thread_on_cpu(device: torch.device):
    """Steps this small run fastest on one CPU thread, and do not stall when the cores are shared."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_tokenizer(patches: torch.Tensor, params: dict) -> dict:
    """Train a PatchTokenizer on the rows of `patches` (on their device): Adam on reconstruction MSE +
    COMMITMENT × commitment loss, straight-through codes, a codebook k-means-initialised on the
    encoder's outputs and then moved by EMA; codes unused for an epoch restart at random encodings.
    Returns the cache entry: the weights, codebook usage and reconstruction MSE on `patches`."""
    with one_thread_on_cpu(patches.device):
        return _train_tokenizer(patches, params)


def _train_tokenizer(patches: torch.Tensor, params: dict) -> dict:
    start = time.perf_counter()
    device, (n, patch_dim) = patches.device, patches.shape
    vocab, batch, epochs = params["vocab_size"], min(params["batch_size"], n), params["epochs"]
    generator = torch.Generator().manual_seed(params["seed"])
    with torch.random.fork_rng(devices=[]):  # the run's global RNG stream is left as it was
        torch.manual_seed(params["seed"])
        tokenizer = PatchTokenizer(patch_dim, vocab, params["hidden"], params["code_dim"]).to(device)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=params["lr"])
    with torch.no_grad():
        sample = torch.randperm(n, generator=generator)[:vocab * KMEANS_SAMPLE].to(device)
        tokenizer.codebook.copy_(kmeans(tokenizer.encoder(patches[sample]), vocab, KMEANS_ITERS, generator))
    per_code = batch / vocab  # the EMA statistics start as if every code took its share of a batch
    cluster_size = torch.full((vocab,), per_code, device=device)
    code_sum = tokenizer.codebook * per_code
    steps = n // batch
    with tqdm(total=epochs * steps, desc="dvae_token tokenizer", unit="step", delay=3, leave=False) as progress:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(device)
            used = torch.zeros(vocab, device=device)
            for step in range(steps):
                x = patches[order[step * batch:(step + 1) * batch]]
                z = tokenizer.encoder(x)
                ids = tokenizer.nearest(z.detach())
                codes = tokenizer.codebook[ids]
                recon = tokenizer.decoder(z + (codes - z).detach())  # straight-through
                loss = F.mse_loss(recon, x) + COMMITMENT * F.mse_loss(z, codes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    counts = torch.bincount(ids, minlength=vocab).to(z.dtype)
                    used += counts
                    cluster_size.lerp_(counts, 1 - EMA_DECAY)
                    code_sum.lerp_(torch.zeros_like(code_sum).index_add_(0, ids, z.detach()), 1 - EMA_DECAY)
                    total = cluster_size.sum()
                    smoothed = (cluster_size + 1e-5) / (total + vocab * 1e-5) * total  # Laplace smoothing
                    tokenizer.codebook.copy_(code_sum / smoothed[:, None])
                progress.update()
            dead = (used == 0).nonzero().squeeze(1)
            if epoch + 1 < epochs and len(dead):
                with torch.no_grad():
                    pick = torch.randint(n, (len(dead),), generator=generator).to(device)
                    tokenizer.codebook[dead] = tokenizer.encoder(patches[pick])
                    code_sum[dead], cluster_size[dead] = tokenizer.codebook[dead] * per_code, per_code
    tokenizer.eval()
    with torch.no_grad():
        ids = torch.cat([tokenizer.tokens(chunk) for chunk in patches.split(TOKEN_CHUNK)])
        squared_error = sum(((tokenizer.reconstruct(i) - chunk) ** 2).sum().item()
                            for i, chunk in zip(ids.split(TOKEN_CHUNK), patches.split(TOKEN_CHUNK)))
    return {"state_dict": {k: v.cpu() for k, v in tokenizer.state_dict().items()}, "patch_dim": patch_dim,
            "codebook_usage": ids.unique().numel() / vocab, "recon_mse": squared_error / patches.numel(),
            "patch_variance": patches.var(dim=0).mean().item(), "fit_patches": n, "steps": epochs * steps,
            "train_s": time.perf_counter() - start}


class TokenTarget:
    """Predict the id of the patch's code in a trained PatchTokenizer; cross-entropy over masked patches."""

    def __init__(self, tokenizer: PatchTokenizer, patch_size: int, stats: dict | None = None):
        self.tokenizer, self.patch_size, self.stats = tokenizer, patch_size, stats or {}

    def out_dim(self, patch_dim: int) -> int:
        return self.tokenizer.codebook.shape[0]

    @torch.no_grad()
    def targets(self, imgs: torch.Tensor, model) -> torch.Tensor:
        patches = patchify(imgs, self.patch_size)
        return self.tokenizer.tokens(patches.flatten(0, 1)).view(patches.shape[:2])

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(pred[mask], target[mask])


def build_dvae_token(params: dict, train_set, cfg: dict, cache_dir, device) -> TokenTarget:
    patch_size, channels = cfg["model"]["patch_size"], train_set.channels
    entry = cache.get_or_build(
        cache_dir, "targets", digest(fit_key("dvae_token", params, cfg, channels)),
        lambda: train_tokenizer(training_patches(train_set, cfg, params["fit_patches"], device), params))
    with torch.device("meta"):  # no initialisation (nor draws from the run's RNG): the weights are loaded
        tokenizer = PatchTokenizer(entry["patch_dim"], params["vocab_size"], params["hidden"], params["code_dim"])
    tokenizer.load_state_dict(entry["state_dict"], assign=True)
    tokenizer = tokenizer.to(device).eval().requires_grad_(False)
    stats = {k: entry[k] for k in ("codebook_usage", "recon_mse", "patch_variance", "fit_patches", "train_s")}
    return TokenTarget(tokenizer, patch_size, stats)


# ----------------------------------------------------------------------------- hog
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


def default_cell(patch_size: int) -> int:
    """Half the patch (the largest divisor of it up to half), at least 1."""
    return next((d for d in range(patch_size // 2, 0, -1) if patch_size % d == 0), 1)


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
    cell = params["cell"] or default_cell(patch_size)
    if patch_size % cell:
        divisors = ", ".join(str(d) for d in range(1, patch_size + 1) if patch_size % d == 0)
        raise ConfigError("pretrain.target_params.cell", f"{cell} does not divide model.patch_size {patch_size}; "
                                                         f"allowed: null or one of {divisors}")
    return HogTarget(params["bins"], cell, patch_size)


# ----------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class TargetKind:
    build: Callable  # (params, train_set, cfg, cache_dir, device) -> target
    params: dict = field(default_factory=dict)  # name -> Option (default, type, range)
    needs: tuple = ()  # of "train_set", "cfg": what build must be given
    doc: str = ""


POSITIVE = dict(low=0.0, high=math.inf, open_interval=True)

TARGETS: dict[str, TargetKind] = {
    "pixel": TargetKind(lambda *_: PixelTarget(normalize_patch=False), doc="the patch's pixels (MAE Table 1d)"),
    "norm_pixel": TargetKind(lambda *_: PixelTarget(normalize_patch=True),
                             doc="the patch's pixels normalised by its own mean and std (MAE)"),
    "pca": TargetKind(build_pca, {
        "components": Option(96, int, low=1, help="principal components kept (MAE: 96); at most patch_size² × channels"),
        "fit_patches": Option(100_000, int, low=1, help="training patches the basis is fitted on"),
    }, ("train_set", "cfg"), "the patch's top principal components (MAE Table 1d)"),
    "dvae_token": TargetKind(build_dvae_token, {  # sized to train in seconds on a CPU for 4 px patches
        "vocab_size": Option(512, int, low=2, help="codebook entries = classes the decoder predicts"),
        "hidden": Option(128, int, low=1, help="width of the MLP encoder and decoder (2 hidden layers each)"),
        "code_dim": Option(32, int, low=1, help="width of a code"),
        "epochs": Option(5, int, low=1, help="passes over the fit patches"),
        "batch_size": Option(256, int, low=1, help="patches per step"),
        "lr": Option(1e-3, float, **POSITIVE, help="Adam's learning rate"),
        "fit_patches": Option(100_000, int, low=1, help="training patches the tokenizer is trained on"),
        "seed": Option(0, int, low=0, help="seeds the tokenizer's weights, codebook and data order"),
    }, ("train_set", "cfg"), "the patch's token in a per-patch VQ-VAE trained once (MAE Table 1d, BEiT)"),
    "hog": TargetKind(build_hog, {
        "bins": Option(9, int, low=1, help="unsigned orientation bins (MaskFeat: 9)"),
        "cell": Option(None, int, low=1, nullable=True, help="cell side in px; null = half the patch"),
    }, ("cfg",), "histograms of oriented gradients per patch (MaskFeat)"),
}


def resolve_params(name: str, params: dict) -> dict:
    """The target's parameters with defaults filled in (raises one-line ConfigError naming the key)."""
    if name not in TARGETS:
        raise ConfigError("pretrain.target", f"{name!r} is not allowed; allowed: {', '.join(TARGETS)}")
    if not isinstance(params or {}, dict):
        raise ConfigError("pretrain.target_params", f"{params!r} has the wrong type; allowed: a mapping")
    options = TARGETS[name].params
    for key in params or {}:
        if key not in options:
            raise ConfigError(f"pretrain.target_params.{key}",
                              f"unknown parameter of target {name!r}; allowed: {', '.join(options) or 'none'}")
    out = {key: option.check(f"pretrain.target_params.{key}", (params or {}).get(key, option.default))
           for key, option in options.items()}
    if name == "dvae_token" and out["fit_patches"] < out["vocab_size"]:
        raise ConfigError("pretrain.target_params.fit_patches",
                          f"{out['fit_patches']} is fewer than vocab_size {out['vocab_size']}; "
                          f"allowed: >= vocab_size")
    return out


def build_target(name: str, params: dict | None = None, *, train_set=None, cfg: dict | None = None,
                 cache_dir=None, device="cpu"):
    """The target `name` with `params` (defaults filled in). pca and dvae_token are fitted on
    `train_set` as `cfg` (the resolved run config) sees it, cached under `cache_dir` (None: fitted
    anew); hog reads the patch size from `cfg`; the pixel targets need nothing else."""
    params = resolve_params(name, params or {})
    kind = TARGETS[name]
    given = {"train_set": train_set is not None, "cfg": cfg is not None}
    missing = [need for need in kind.needs if not given[need]]
    if missing:
        raise ValueError(f"target {name!r} needs {' and '.join(missing)} (the training set and the resolved "
                         f"run config) to be built: build_target({name!r}, params, train_set=..., cfg=...)")
    return kind.build(params, train_set, cfg, cache_dir, torch.device(device))
