"""The `dvae_token` target (MAE Table 1d "dVAE token", BEiT's target): the id of each patch's code
in a small per-patch VQ-VAE (`PatchTokenizer`), trained once on the training patches
(`train_tokenizer`: k-means-initialised codebook moved by EMA) and cached; cross-entropy over
`vocab_size` ids on the masked patches."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench.core import cache
from bench.core.errors import ConfigError, require_finite
from bench.core.hashing import digest
from bench.core.patches import patchify
from bench.targets.fit import fit_key, training_patches

COMMITMENT = 0.25        # VQ-VAE's commitment weight (beta)
EMA_DECAY = 0.99         # codebook EMA (VQ-VAE-2)
KMEANS_ITERS = 10        # Lloyd iterations of the codebook's k-means initialisation
KMEANS_SAMPLE = 20       # k-means initialisation on vocab_size × this many patches
TOKEN_CHUNK = 65536      # patches per chunk when looking up their nearest codes


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
    if n < vocab:  # fit_patches >= vocab_size is checked up front, but a small training set has fewer
        raise ConfigError("pretrain.target_params.vocab_size",
                          f"{vocab} codes need at least as many training patches to initialise the codebook "
                          f"from, and the tokenizer's fit has {n} (fit_patches {params['fit_patches']}, or every "
                          f"patch of the training set when it has fewer); allowed: at most {n}")
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
            used, epoch_losses = torch.zeros(vocab, device=device), []
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
                epoch_losses.append(loss.detach())
                with torch.no_grad():
                    counts = torch.bincount(ids, minlength=vocab).to(z.dtype)
                    used += counts
                    cluster_size.lerp_(counts, 1 - EMA_DECAY)
                    code_sum.lerp_(torch.zeros_like(code_sum).index_add_(0, ids, z.detach()), 1 - EMA_DECAY)
                    total = cluster_size.sum()
                    smoothed = (cluster_size + 1e-5) / (total + vocab * 1e-5) * total  # Laplace smoothing
                    tokenizer.codebook.copy_(code_sum / smoothed[:, None])
                progress.update()
            if epoch_losses:
                require_finite(torch.stack(epoch_losses), "dvae_token tokenizer training", epoch + 1)
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
