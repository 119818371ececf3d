"""Speed: images/s of every step kind, against an official-style MAE path, and the harness at scale.

    speed_report(preset, ...)      one dict per measured step kind (images/s, ratio, exact config)
    bench_harness(n_runs, tmpdir)  seconds to expand an n-run spec and to report n finished runs
    main_speed(args)               the CLI entry: one JSON line per row

Step kinds:

    pretrain_plain     the official facebookresearch/mae recipe, re-implemented here (`OfficialMAE`):
                       eager fp32, a torch DataLoader whose workers run per-sample torchvision
                       transforms (RandomResizedCrop(scale 0.2-1, bicubic), flip, ToTensor,
                       Normalize) on uint8 images held in memory, masking inside the model by
                       argsort of noise + gather, a decoder that predicts all L patches, the
                       per-patch-normalised MSE averaged over the masked patches, AdamW with
                       weight-decay groups (the default single-tensor loop on CPU), and the grad
                       norm the official loss scaler computes every step; on a GPU, fp16
                       autocast and the loss scaler themselves (main_pretrain's AMP). It keeps
                       L - round(ratio·L) tokens as our path does (the official int(L·(1-ratio))
                       agrees at 0.75 and can differ by one elsewhere).
    pretrain_fast      our path (bench.train.pretrain's step): uint8 batches cut on the device, batched
                       augmentation (bench.data.augment), masks from bench.masking, bench.methods.mae
                       with full_pred=False (the last decoder block, norm and projection only
                       for the masked patches, the only ones the loss reads), fused AdamW; on
                       a CPU, forward and backward as one sub-batch per thread (bench.train.pretrain.SplitStep);
                       fp32 on the CPU, bf16 autocast on a GPU (--precision).
    pretrain_fast_compiled   the same with torch.compile, unsplit (only with compile=True).
    encoder_forward    the evals' feature extraction: timm ViT on all patches, no grad, eval mode.
    linear_probe_step_cached / _recomputed   one probe step on cached features (augmentation
                       none), and with features recomputed from augmented images.
    finetune_step      one fine-tuning step (bench.train.evals.finetune: drop path, layer decay, label
                       smoothing, crop_rand).

Both pre-training paths build the same model sizes and see the same number of tokens; on the
CPU both compute in fp32; they start from the same weights. Every kind gets warm-up steps, then the kinds run
in turns ("rounds", the order alternating) so a noisy machine slows all of them alike; a kind's
images/s is the median over its windows, `ratio_to_plain` the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import timm
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from bench import masking
from bench.data.augment import augment, normalize
from bench.study.config import MODEL_PRESETS, resolve
from bench.data.datasets import ImageSet, make_synthetic
from bench.methods.mae import build_mae
from bench.train.optim import LARS, fused_adamw, layer_decay_groups, weight_decay_groups
from bench.train.pretrain import SplitStep
from bench.targets import build_target

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)  # stats of the synthetic images (bench.data.datasets.STATS)
BLR, WEIGHT_DECAY, BETAS = 1.5e-4, 0.05, (0.9, 0.95)
MIN_WINDOW_S = 0.3  # a cheap kind runs enough steps per window to last this long


# ============================================================================ the official-style MAE
def official_sincos_pos_embed(dim: int, grid_size: int, cls_token: bool) -> np.ndarray:
    """The official 2-D sin-cos table, computed as its util/pos_embed.py does (numpy, float64)."""
    def one_axis(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    axes = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(axes, axes), axis=0).reshape(2, 1, grid_size, grid_size)  # w first
    emb = np.concatenate([one_axis(dim // 2, grid[0]), one_axis(dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return emb


class OfficialMAE(nn.Module):
    """A local re-implementation of the official MAE model (facebookresearch/mae models_mae.py).

    Same parameter names as bench.methods.mae, so weights load from one into the other. The
    forward is the official one: masking inside the model (`random_masking`: argsort of noise,
    gather with repeated indices, visible tokens in noise order), mask tokens appended and
    un-shuffled by a gather, the decoder predicting all L patches, the loss over all patches
    weighted by the mask. `noise` (B×L) may be given to fix the mask, as in later official code.
    Attention is computed as the timm 0.3.2 the official repo pins computes it: explicit
    softmax(q·kᵀ·scale)·v, not torch's fused scaled_dot_product_attention (same math).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=True):
        super().__init__()
        self.in_chans = in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        for block in [*self.blocks, *self.decoder_blocks]:
            block.attn.fused_attn = False  # timm 0.3.2's attention: q·kᵀ, softmax, ·v as separate ops
        self.initialize_weights()

    def initialize_weights(self):
        grid = int(self.patch_embed.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(
            official_sincos_pos_embed(self.pos_embed.shape[-1], grid, True)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(torch.from_numpy(
            official_sincos_pos_embed(self.decoder_pos_embed.shape[-1], grid, True)).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        torch.nn.init.normal_(self.cls_token, std=0.02)
        torch.nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def patchify(self, imgs):
        p = self.patch_embed.patch_size[0]
        c = self.in_chans
        h = w = imgs.shape[2] // p
        x = imgs.reshape(shape=(imgs.shape[0], c, h, p, w, p))
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * c))

    def random_masking(self, x, mask_ratio, noise=None, len_keep=None):
        """Per-sample shuffle by argsort of noise; keep the first len_keep (official: int(L·(1-ratio)))."""
        n, length, d = x.shape
        if len_keep is None:
            len_keep = int(length * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, length, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, length], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x, mask_ratio, noise=None, len_keep=None):
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise, len_keep)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        return x[:, 1:, :]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
        loss = (pred - target) ** 2
        loss = loss.mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75, noise=None, len_keep=None):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise, len_keep)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask


def build_official(model_cfg: dict, img_size: int, in_chans: int) -> OfficialMAE:
    keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
            "decoder_num_heads", "mlp_ratio")
    return OfficialMAE(img_size=img_size, in_chans=in_chans, **{k: model_cfg[k] for k in keys})


def noise_for_mask(mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise whose argsort puts the visible patches (mask False) first: the official masking then
    reproduces `mask` (visible tokens in random order, which attention does not see)."""
    return mask.float() + 0.5 * torch.rand(mask.shape, generator=generator, device=mask.device)


def official_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """timm's optim_factory.add_weight_decay, as main_pretrain.py uses it."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if len(param.shape) == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def official_grad_norm(parameters) -> torch.Tensor:
    """util/misc.get_grad_norm_: what the official loss scaler computes after every backward."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.norm(torch.stack([torch.norm(g.detach(), 2.0) for g in grads]), 2.0)


class MemoryImages(torch.utils.data.Dataset):
    """uint8 N×H×W×C images held in memory, served one PIL image at a time (like torchvision's CIFAR10)."""

    def __init__(self, images_nhwc: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images_nhwc, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        from PIL import Image
        img = self.images[index]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(img), int(self.labels[index])


def official_transform(img_size: int, mean, std):
    import torchvision.transforms as T
    return T.Compose([T.RandomResizedCrop(img_size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean=list(mean), std=list(std))])


# ============================================================================ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Kind:
    """A step kind: `step()` runs one step of `batch` images."""

    def __init__(self, name: str, step: Callable[[], None], batch: int, device: torch.device):
        self.name, self.step, self.batch, self.device = name, step, batch, device
        self.steps_per_window = 1
        self.rates: list[float] = []
        self.info: dict = {}

    def run(self, n: int) -> float:
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(n):
            self.step()
        _sync(self.device)
        return time.perf_counter() - start


def measure(kinds: list[Kind], steps: int, warmup: int, windows: int, min_window_s: float = MIN_WINDOW_S) -> None:
    """Warm up every kind, then `windows` rounds in which every kind runs one timed window.

    A window is steps // windows steps, more for a cheap kind so that it lasts min_window_s; the
    order of the kinds alternates from round to round.
    """
    per_window = max(1, steps // windows)
    for kind in kinds:
        kind.run(max(warmup - 1, 0))
        one = kind.run(1)  # the last warm-up step sizes the window
        kind.steps_per_window = max(per_window, math.ceil(min_window_s / max(one, 1e-6)))
    threads = torch.get_num_threads()
    for r in range(windows):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            seconds = kind.run(kind.steps_per_window)
            kind.rates.append(kind.batch * kind.steps_per_window / seconds)
        if torch.get_num_threads() != threads:
            raise RuntimeError(f"torch threads changed from {threads} to {torch.get_num_threads()}")


# ============================================================================ the step kinds
def _images(n: int, channels: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 C×size×size images (bench.data.datasets's synthetic gratings) and labels."""
    images, labels, _ = make_synthetic("train", n=n, size=size)
    images = torch.from_numpy(images)
    if channels != 3:
        images = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8).expand(-1, channels, -1, -1)
    return images.contiguous(), torch.from_numpy(labels)


def _model_cfg(preset: str, img_size: int) -> dict:
    return resolve({"model": {"preset": preset}, "data": {"name": "synthetic", "img_size": img_size}})


class _Cycle:
    """Endless batches: a new epoch (a new iterator) whenever one runs out."""

    def __init__(self, make: Callable[[int], object]):
        self.make, self.epoch, self.it = make, 0, iter(make(0))

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = iter(self.make(self.epoch))
            return next(self.it)


def plain_pretrain_kind(cfg: dict, images: torch.Tensor, labels: torch.Tensor, batch: int, ratio: float,
                        device: torch.device, workers: int, state: dict, data: bool = True) -> Kind:
    """The official recipe's training step, fed by a DataLoader with per-sample transforms.

    data=False (an ablation): the same step on one batch transformed once, no DataLoader.
    """
    img_size, channels = cfg["data"]["img_size"], images.shape[1]
    torch.manual_seed(0)
    model = build_official(cfg["model"], img_size, channels).to(device)
    model.load_state_dict(state)
    model.train()
    lr = BLR * batch / 256
    optimizer = torch.optim.AdamW(official_param_groups(model, WEIGHT_DECAY), lr=lr, betas=BETAS)
    dataset = MemoryImages(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(),  # H×W×C, as CIFAR
                           official_transform(img_size, MEAN[:channels], STD[:channels]))
    length = model.patch_embed.num_patches
    len_keep = length - masking.num_masked(length, ratio)  # the token count of our path (see module doc)

    def loader(epoch: int):
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(epoch))
        return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch, num_workers=workers,
                                           pin_memory=device.type == "cuda", drop_last=True)

    if data:
        batches = _Cycle(loader)
        next_batch = batches.next
    else:
        fixed = next(iter(torch.utils.data.DataLoader(dataset, batch_size=batch)))
        next_batch = lambda: fixed  # noqa: E731

    amp = device.type == "cuda"  # the official recipe: fp16 autocast and its loss scaler on a GPU
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def step():
        samples, _ = next_batch()
        for group in optimizer.param_groups:  # util/lr_sched.adjust_learning_rate, every iteration
            group["lr"] = lr * group.get("lr_scale", 1.0)
        samples = samples.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss, _, _ = model(samples, mask_ratio=ratio, len_keep=len_keep)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value}")
        if scaler is None:
            loss.backward()
            official_grad_norm(model.parameters())
            optimizer.step()
        else:  # util/misc.NativeScalerWithGradNormCount
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            official_grad_norm(model.parameters())
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad()

    kind = Kind("pretrain_plain" if data else "ablation:plain_without_data", step, batch, device)
    kind.info = {"data": f"DataLoader, {workers} workers, per-sample PIL transforms (bicubic)" if data
                 else "one batch, transformed once", "optimizer": "AdamW (default: single-tensor loop on CPU)",
                 "precision": "fp16 autocast + GradScaler" if amp else "fp32",
                 "visible_tokens": len_keep, "decoder_predicts": length}
    return kind


def fast_pretrain_kind(cfg: dict, images: torch.Tensor, labels: torch.Tensor, batch: int, ratio: float,
                       device: torch.device, state: dict, compile: bool = False, *, fused: bool = True,
                       full_pred: bool = False, data: bool = True, split: bool = True,
                       precision: str = "fp32", name: str | None = None) -> Kind:
    """bench.train.pretrain's training step: batched on-device augmentation and masks, masked-only prediction.

    Ablations: fused=False (the default single-tensor AdamW), full_pred=True
    (the decoder predicting all patches), data=False (one batch augmented once), split=False
    (one forward and backward of the whole batch, not one sub-batch per CPU thread).
    precision: "fp32" or "bf16" (autocast), as pretrain.precision.
    """
    img_size, channels = cfg["data"]["img_size"], images.shape[1]
    torch.manual_seed(0)
    target = build_target("norm_pixel")
    model = build_mae(cfg["model"], img_size, channels).to(device)
    model.load_state_dict(state)
    model.train()
    lr = BLR * batch / 256
    if fused:
        optimizer, flavour = fused_adamw(weight_decay_groups(model, WEIGHT_DECAY), lr, betas=BETAS)
    else:
        optimizer = torch.optim.AdamW(weight_decay_groups(model, WEIGHT_DECAY), lr=lr, betas=BETAS)
        flavour = "default"
    dataset = ImageSet("synthetic", images, labels, 10)
    dataset.mean, dataset.std = MEAN[:channels], STD[:channels]
    grid = (model.grid, model.grid)
    gen = torch.Generator(device=device).manual_seed(0)
    batches = _Cycle(lambda epoch: dataset.batches(batch, shuffle=True, seed=0, epoch=epoch, drop_last=True,
                                                   device=device))
    fixed = None if data else normalize(augment(batches.next()[0], "crop_rand", img_size, gen),
                                        dataset.mean, dataset.std)
    # as bench.train.pretrain: compiled code runs as one part
    split_step = SplitStep(torch.compile(model) if compile else model,
                           SplitStep.parts_for(device, 1) if split and not compile else 1, precision)

    def step():
        if data:
            images_, _ = batches.next()
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x = normalize(augment(images_, "crop_rand", img_size, gen), dataset.mean, dataset.std) if data else fixed
        mask = masking.generate("random", x.shape[0], grid, ratio, {}, gen, device)
        loss = split_step(x, mask, target, full_pred=full_pred)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()}")
        optimizer.step()

    kind = Kind(name or ("pretrain_fast_compiled" if compile else "pretrain_fast"), step, batch, device)
    length = model.grid ** 2
    kind.info = {"data": "uint8 batches on the device, batched crop_rand (affine_grid + grid_sample)" if data
                 else "one batch, augmented once", "optimizer": f"AdamW ({flavour})",
                 "step_parts": split_step.parts, "precision": precision,
                 "visible_tokens": length - masking.num_masked(length, ratio),
                 "decoder_predicts": length if full_pred else masking.num_masked(length, ratio)}
    return kind


def ablation_kinds(cfg, images, labels, batch, ratio, device, workers, state, precision) -> list[Kind]:
    """What each difference between the two paths is worth, each measured in the same rounds."""
    fast = partial(fast_pretrain_kind, cfg, images, labels, batch, ratio, device, state, precision=precision)
    kinds = [
        plain_pretrain_kind(cfg, images, labels, batch, ratio, device, workers, state, data=False),
        fast(data=False, name="ablation:fast_without_data"),
        fast(fused=False, name="ablation:fast_default_adamw"),
        fast(full_pred=True, name="ablation:fast_full_pred"),
        fast(split=False, name="ablation:fast_unsplit"),
    ]
    if precision != "fp32":
        kinds.append(fast(precision="fp32", name="ablation:fast_fp32"))
    return kinds


def eval_kinds(cfg: dict, images: torch.Tensor, labels: torch.Tensor, batch: int, device: torch.device,
               encoder_state: dict) -> list[Kind]:
    """encoder_forward, linear_probe_step_cached / _recomputed, finetune_step: bench.train.evals' steps."""
    from bench.train.evals import build_vit
    from bench.train.optim import scaled_lr

    img_size, channels = cfg["data"]["img_size"], images.shape[1]
    dataset = ImageSet("synthetic", images, labels, 10)
    dataset.mean, dataset.std = MEAN[:channels], STD[:channels]
    gen = torch.Generator(device=device).manual_seed(1)
    kinds = []

    # encoder_forward: the features the probe caches (all patches, no grad, eval mode)
    vit = build_vit(cfg, encoder_state, 10, channels, "cls").to(device)
    vit.requires_grad_(False)
    vit.eval()
    plain_batches = _Cycle(lambda epoch: dataset.batches(batch, shuffle=False, drop_last=True, device=device))

    def features(x: torch.Tensor) -> torch.Tensor:
        return vit.forward_head(vit.forward_features(x), pre_logits=True)

    @torch.no_grad()
    def encoder_step():
        images_, _ = plain_batches.next()
        features(normalize(augment(images_, "none", img_size, None), dataset.mean, dataset.std))

    kinds.append(Kind("encoder_forward", encoder_step, batch, device))

    # linear probe: BatchNorm (no affine) + linear head, LARS, on cached or recomputed features
    head = nn.Sequential(nn.BatchNorm1d(vit.embed_dim, affine=False, eps=1e-6),
                         nn.Linear(vit.embed_dim, 10)).to(device)
    optimizer = LARS(head.parameters(), lr=scaled_lr(0.1, batch))
    criterion = nn.CrossEntropyLoss()
    n_cached = min(len(images), 8 * batch)  # the head cycles over these; more would only cost set-up time
    with torch.no_grad():
        cached = torch.cat([features(normalize(augment(images[i:i + 512].to(device), "none", img_size, None),
                                               dataset.mean, dataset.std))
                            for i in range(0, n_cached, 512)])[:n_cached]
    cached_labels = labels[:n_cached].to(device)

    def head_step(feats, y):
        loss = criterion(head(feats), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def cached_batches(epoch):
        order = torch.randperm(len(cached), generator=torch.Generator().manual_seed(epoch)).to(device)
        return ((cached[idx], cached_labels[idx]) for idx in order.split(batch) if len(idx) == batch)

    cached_cycle = _Cycle(cached_batches)
    kinds.append(Kind("linear_probe_step_cached", lambda: head_step(*cached_cycle.next()), batch, device))
    aug_batches = _Cycle(lambda epoch: dataset.batches(batch, shuffle=True, seed=0, epoch=epoch, drop_last=True,
                                                       device=device))

    def recomputed_step():
        images_, y = aug_batches.next()
        head_step(features(normalize(augment(images_, "crop_rand", img_size, gen), dataset.mean, dataset.std)), y)

    kinds.append(Kind("linear_probe_step_recomputed", recomputed_step, batch, device))

    # fine-tuning: all weights, AdamW with layer-wise lr decay, drop path, label smoothing
    ecfg = cfg["evals"]["finetune"]
    ft = build_vit(cfg, encoder_state, 10, channels, ecfg["feature"], drop_path=ecfg["drop_path"]).to(device)
    ft.train()
    ft_opt = torch.optim.AdamW(layer_decay_groups(ft, ecfg["weight_decay"], ecfg["layer_decay"]),
                               lr=scaled_lr(ecfg["blr"], batch))
    ft_loss = nn.CrossEntropyLoss(label_smoothing=ecfg["label_smoothing"])
    ft_batches = _Cycle(lambda epoch: dataset.batches(batch, shuffle=True, seed=1, epoch=epoch, drop_last=True,
                                                      device=device))

    def finetune_step():
        images_, y = ft_batches.next()
        loss = ft_loss(ft(normalize(augment(images_, "crop_rand", img_size, gen), dataset.mean, dataset.std)), y)
        ft_opt.zero_grad(set_to_none=True)
        loss.backward()
        ft_opt.step()

    kinds.append(Kind("finetune_step", finetune_step, batch, device))
    return kinds


# ============================================================================ the report
def speed_report(preset: str, batch: int = 256, ratio: float = 0.75, device: str = "cpu", steps: int = 20,
                 img_size: int = 32, channels: int = 3, compile: bool = False, *, warmup: int = 2,
                 windows: int | None = None, workers: int | None = None, evals: bool = True,
                 model_overrides: dict | None = None, min_window_s: float = MIN_WINDOW_S,
                 ablations: bool = False, threads: int | None = None, precision: str | None = None) -> list[dict]:
    """Images/s of each step kind for `preset` (see the module doc); one dict per kind.

    steps: timed steps per kind, split over `windows` rounds (default min(5, steps)).
    workers: the plain path's DataLoader workers (default min(10, cores): official default 10).
    model_overrides: model keys replacing the preset's (tests use a tiny model).
    ablations: also the 'ablation:*' kinds, each path less one of its differences.
    threads: torch threads for every kind (default: as set; the DataLoader workers use one each).
    precision: our path's, "fp32" or "bf16" (default: bf16 on a GPU, fp32 on the CPU — the
    issue's CPU target is fp32). The plain path is the official recipe's: fp32 on the CPU,
    fp16 autocast with a loss scaler on a GPU.
    """
    precision = precision or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _speed_report(preset, batch, ratio, device, steps, img_size, channels, compile, warmup, windows,
                             workers, evals, model_overrides, min_window_s, ablations, precision)
    finally:
        torch.set_num_threads(previous_threads)


def _speed_report(preset, batch, ratio, device, steps, img_size, channels, compile, warmup, windows, workers,
                  evals, model_overrides, min_window_s, ablations, precision) -> list[dict]:
    dev = torch.device(device)
    windows = windows or max(1, min(5, steps))
    workers = min(10, os.cpu_count() or 1) if workers is None else workers
    cfg = _model_cfg(preset, img_size)
    cfg["model"].update(model_overrides or {})
    n_images = batch * (steps + warmup + 4 * windows + 2)
    images, labels = _images(n_images, channels, img_size)

    torch.manual_seed(0)
    state = build_mae(cfg["model"], img_size, channels).state_dict()  # the weights both paths start from
    kinds = [plain_pretrain_kind(cfg, images, labels, batch, ratio, dev, workers, state),
             fast_pretrain_kind(cfg, images, labels, batch, ratio, dev, state, precision=precision)]
    compile_s = None
    if compile:
        compiled = fast_pretrain_kind(cfg, images, labels, batch, ratio, dev, state, compile=True,
                                      precision=precision)
        compile_s = compiled.run(1)  # the first call compiles
        kinds.append(compiled)
    if ablations:
        kinds += ablation_kinds(cfg, images, labels, batch, ratio, dev, workers, state, precision)
    if evals:
        encoder_state = {k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))}
        kinds += eval_kinds(cfg, images, labels, batch, dev, encoder_state)
    load_before = os.getloadavg()[0]
    measure(kinds, steps, warmup, windows, min_window_s)
    load_after = os.getloadavg()[0]

    m = cfg["model"]
    base_config = {
        "preset": preset, "img": img_size, "channels": channels, "patch_size": m["patch_size"],
        "encoder": {"dim": m["embed_dim"], "depth": m["depth"], "heads": m["num_heads"]},
        "decoder": {"dim": m["decoder_embed_dim"], "depth": m["decoder_depth"], "heads": m["decoder_num_heads"]},
        "mlp_ratio": m["mlp_ratio"], "patches": (img_size // m["patch_size"]) ** 2, "batch": batch,
        "ratio": ratio, "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "timm": timm.__version__, "cpu": platform.processor() or platform.machine(),
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
    }
    plain = kinds[0]
    rows = []
    for kind in kinds:
        row = {"kind": kind.name, "images_per_s": round(statistics.median(kind.rates), 2)}
        if kind.name.startswith(("pretrain", "ablation")):
            row["ratio_to_plain"] = round(statistics.median(
                [r / p for r, p in zip(kind.rates, plain.rates)]), 4)
        if kind.name == "linear_probe_step_cached":
            recomputed = next(k for k in kinds if k.name == "linear_probe_step_recomputed")
            row["ratio_to_recomputed"] = round(statistics.median(
                [r / p for r, p in zip(kind.rates, recomputed.rates)]), 2)
        config = dict(base_config, steps_per_window=kind.steps_per_window, windows=len(kind.rates),
                      warmup=warmup, **kind.info)
        if kind.name == "pretrain_fast_compiled":
            config["compile_s"] = round(compile_s, 2)
        row["config"] = config
        row["window_images_per_s"] = [round(r, 2) for r in kind.rates]
        rows.append(row)
    return rows


# ============================================================================ the harness at scale
def _factor(n: int) -> tuple[int, int, int]:
    """n = ratios × blrs × seeds, the axes as balanced as the divisors allow."""
    seeds = 10 if n % 10 == 0 and n >= 100 else 1
    m = n // seeds
    ratios = max(d for d in range(1, math.isqrt(m) + 1) if m % d == 0)
    return ratios, m // ratios, seeds


def harness_spec(n_runs: int, name: str = "harness") -> dict:
    """A spec whose grid expands to exactly n_runs runs (masking.ratio × pretrain.blr × seeds)."""
    n_ratio, n_blr, n_seeds = _factor(n_runs)
    ratios = [round(0.05 + 0.9 * i / max(n_ratio - 1, 1), 6) for i in range(n_ratio)]
    blrs = [round(1e-4 * (1 + i), 8) for i in range(n_blr)]
    return {"name": name, "description": f"{n_runs} runs to time the harness",
            "base": {"data": {"name": "synthetic", "img_size": 32},
                     "model": {"preset": "mae_vit_tiny_patch4"},
                     "pretrain": {"epochs": 100, "warmup_epochs": 10, "batch_size": 256}},
            "grid": {"masking.ratio": ratios, "pretrain.blr": blrs},
            "seeds": list(range(n_seeds)), "launch": {"executor": "local"}}


def _load_study_stages(spec: dict) -> dict[str, float]:
    """Seconds of each stage of spec._expand's per-run loop, timed one call at a time."""
    import copy
    import itertools

    from bench.study.config import run_id, set_dotted

    base = spec["base"]
    axes = [[{k: v} for v in values] for k, values in spec["grid"].items()] + [[{"seed": s} for s in spec["seeds"]]]
    stages = {"copy_of_base": 0.0, "resolve": 0.0, "run_id": 0.0}
    clock = time.perf_counter
    for combo in itertools.product(*axes):
        t0 = clock()
        partial_cfg = copy.deepcopy(base)
        t1 = clock()
        for choice in combo:
            for key, value in choice.items():
                set_dotted(partial_cfg, key, value)
        t2 = clock()
        config = resolve(partial_cfg)
        t3 = clock()
        run_id(config)
        t4 = clock()
        stages["copy_of_base"] += t1 - t0
        stages["resolve"] += t3 - t2
        stages["run_id"] += t4 - t3
    return {k: round(v, 3) for k, v in stages.items()}


def _fake_result(config: dict, rid: str, study: str, rng: random.Random) -> dict:
    """A result.json as bench.launch.job.run_one writes it, with plausible numbers."""
    ratio = config["masking"]["ratio"]
    ft = 80 + 10 * math.sin(3 * ratio) + rng.gauss(0, 0.5)
    lp = 55 + 15 * math.sin(3 * ratio) + rng.gauss(0, 1.0)
    wall_pre = rng.uniform(300, 900)
    return {
        "run_id": rid, "study": study, "finetune_top1": ft, "linear_probe_top1": lp,
        "linear_probe_feature": config["evals"]["linear_probe"]["feature"],
        "finetune_feature": config["evals"]["finetune"]["feature"],
        "evals": {"linear_probe": {"top1": lp, "feature": config["evals"]["linear_probe"]["feature"],
                                   "cached_features": False, "wall_s": rng.uniform(50, 100)},
                  "finetune": {"top1": ft, "feature": config["evals"]["finetune"]["feature"],
                               "wall_s": rng.uniform(100, 300)}},
        "pretrain_images_per_s": rng.uniform(800, 1200), "pretrain_wall_s": wall_pre,
        "pretrain_final_loss": rng.uniform(0.3, 0.6), "total_wall_s": wall_pre + rng.uniform(150, 400),
        "n_params": 1_234_567, "n_params_encoder": 812_345, "torch_version": torch.__version__,
        "timm_version": timm.__version__, "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "device": "cpu (x86_64, 2 threads)", "host": "node01", "slurm_job_id": None, "config": config,
    }


def _write_report_stages(study_dir: Path, reports_root: Path) -> dict[str, float]:
    """Seconds of each stage of report.write_report, called one after the other as it does."""
    from bench.analysis import report as R
    from bench.launch.store import atomic_write_text

    stages, clock = {}, time.perf_counter
    t = clock()
    frame = R.runs_frame(study_dir)
    stages["runs_frame (read 10k result.json + DataFrame)"], t = clock() - t, clock()
    axes = R.varying_axes(frame)
    table = R.summary_table(frame, axes)
    stages["varying_axes + summary_table"], t = clock() - t, clock()
    out = reports_root / (study_dir.name + "_stages")
    atomic_write_text(out / "runs.csv", frame.to_csv(index=False))
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    atomic_write_text(out / "table.md", R.format_markdown(table, axes) + R._setup_line(frame))
    stages["csv + markdown"], t = clock() - t, clock()
    R.plot_study(frame, axes, out / "plot.png", study_dir.name)
    stages["plot_study (png)"] = clock() - t
    return {k: round(v, 3) for k, v in stages.items()}


def bench_harness(n_runs: int = 10000, tmpdir: str | Path | None = None) -> list[dict]:
    """Time load_study on an n_runs spec (target < 1 s) and write_report on n_runs finished runs (< 5 s).

    Returns two rows, {'kind': 'load_study' | 'write_report', 'seconds', 'target_s', 'stages_s', ...}:
    the stages are timed separately (unprofiled) to show where the time goes.
    """
    import yaml

    from bench.analysis import report as report_mod
    from bench.study import spec as spec_mod
    from bench.launch import store

    tmp_ctx = tempfile.TemporaryDirectory() if tmpdir is None else None
    root = Path(tmp_ctx.name if tmp_ctx else tmpdir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        spec = harness_spec(n_runs)
        spec_path = root / "harness.yaml"
        spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))

        start = time.perf_counter()
        study = spec_mod.load_study(spec_path)
        load_s = time.perf_counter() - start
        stages = _load_study_stages(spec)
        load_row = {
            "kind": "load_study", "n_runs": len(study.runs), "seconds": round(load_s, 3), "target_s": 1.0,
            "stages_s": stages}

        # n finished result folders, written directly
        study_dir = root / "results" / study.name
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        rng = random.Random(0)
        start = time.perf_counter()
        for run in study.runs:
            folder = study_dir / run.run_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(yaml.dump(run.config, Dumper=dumper, sort_keys=True))
            (folder / "result.json").write_text(json.dumps(_fake_result(run.config, run.run_id, study.name, rng),
                                                           indent=2, sort_keys=True) + "\n")
            (folder / "metrics.jsonl").write_text("")
        store.write_study_manifest(study_dir, study.name, study.description, str(spec_path), study.axes, [r.run_id for r in study.runs])
        write_s = time.perf_counter() - start

        start = time.perf_counter()
        out = report_mod.write_report(study_dir, root / "reports")
        report_s = time.perf_counter() - start
        report_row = {"kind": "write_report", "n_runs": out["n_runs"], "seconds": round(report_s, 3),
                      "target_s": 5.0, "stages_s": _write_report_stages(study_dir, root / "reports"),
                      "fabricate_folders_s": round(write_s, 2)}
        return [load_row, report_row]
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()


# ============================================================================ the CLI
def add_speed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `mimbench bench speed`."""
    parser.add_argument("--preset", default="mae_vit_small_patch4", choices=tuple(MODEL_PRESETS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per kind (split over 5 windows)")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the fast path")
    parser.add_argument("--ablations", action="store_true", help="also measure each path less one difference")
    parser.add_argument("--threads", type=int, help="torch threads for both paths (default: torch's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="our path's precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--harness", action="store_true", help="also time load_study and write_report at scale")
    parser.add_argument("--harness-runs", type=int, default=10000)
    return parser


def main_speed(args) -> int:
    """`mimbench bench speed`: one JSON line per measured kind (and per harness timing with --harness)."""
    rows = speed_report(args.preset, batch=args.batch, ratio=args.ratio, device=args.device, steps=args.steps,
                        img_size=getattr(args, "img_size", 32), channels=getattr(args, "channels", 3),
                        compile=getattr(args, "compile", False), ablations=getattr(args, "ablations", False),
                        threads=getattr(args, "threads", None), precision=getattr(args, "precision", None))
    for row in rows:
        print(json.dumps(row), flush=True)
    if getattr(args, "harness", False):
        for row in bench_harness(getattr(args, "harness_runs", 10000)):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_speed(add_speed_arguments(argparse.ArgumentParser("bench speed")).parse_args()))
