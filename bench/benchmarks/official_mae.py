"""The baseline of `mimbench bench speed`: the official facebookresearch/mae recipe, ported here.

    OfficialMAE             models_mae.py: masking inside the model by argsort of noise + gather,
                            a decoder predicting all L patches, the loss weighted by the mask
    official_param_groups   timm's optim_factory.add_weight_decay, as main_pretrain.py uses it
    official_transform      RandomResizedCrop(scale 0.2-1, bicubic), flip, ToTensor, Normalize
    plain_pretrain_kind     its training step, fed by a DataLoader whose workers run per-sample
                            transforms, AdamW (the default single-tensor loop on CPU), the grad
                            norm the official loss scaler computes; on a GPU, fp16 autocast and the
                            loss scaler themselves (main_pretrain's AMP)

It is a separate, faithful port — not our pre-training step (bench.train.pretrain) — because it is
what our step is measured against. It shares with our path only what does not change what it
computes: the patchify (bench.core.patches.patchify is the official layout), the token count
L - round(ratio·L) (the official int(L·(1-ratio)) agrees at 0.75 and can differ by one
elsewhere), and the recipe's numbers (blr, weight decay, betas) read from the same config.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from bench import masking
from bench.benchmarks.timing import Cycle, Kind
from bench.core.patches import patchify
from bench.train.optim import scaled_lr


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
    `fused_attn` False: attention as the timm 0.3.2 the official repo pins computes it, explicit
    softmax(q·kᵀ·scale)·v; True: as today's timm computes it for a user who runs the official
    code with it, torch's fused scaled_dot_product_attention (same math).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=True, fused_attn: bool = False):
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
            block.attn.fused_attn = fused_attn  # False: timm 0.3.2's attention, q·kᵀ, softmax, ·v as separate ops
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
        """The official reshape + einsum("nchpwq->nhwpqc") + reshape is bench.core.patches.patchify:
        the same (p, q, c) layout and the same one permuted copy."""
        return patchify(imgs, self.patch_embed.patch_size[0])

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


def build_official(model_cfg: dict, img_size: int, in_chans: int, fused_attn: bool = False) -> OfficialMAE:
    keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
            "decoder_num_heads", "mlp_ratio")
    return OfficialMAE(img_size=img_size, in_chans=in_chans, fused_attn=fused_attn, **{k: model_cfg[k] for k in keys})


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


def plain_pretrain_kind(cfg: dict, train_set, device: torch.device, workers: int, state: dict,
                        data: bool = True, fused_attn: bool = False) -> Kind:
    """The official recipe's training step on `train_set`'s images (the in-memory uint8 ones), fed by a
    DataLoader with per-sample transforms; the recipe (batch, blr, weight decay, betas, mask ratio)
    from the resolved run config `cfg`, the weights from `state`.

    fused_attn False: "pretrain_plain", the official code on the timm 0.3.2 it pins (explicit
    attention); True: "pretrain_official", the official code on today's timm (fused attention), the
    baseline a user running the official repo today gets.
    data=False (an ablation): the same step on one batch transformed once, no DataLoader.
    """
    img_size, channels = cfg["data"]["img_size"], train_set.channels
    pcfg, ratio = cfg["pretrain"], cfg["masking"]["ratio"]
    batch = pcfg["batch_size"]
    torch.manual_seed(cfg["seed"])
    model = build_official(cfg["model"], img_size, channels, fused_attn).to(device)
    model.load_state_dict(state)
    model.train()
    lr = scaled_lr(pcfg["blr"], batch)
    optimizer = torch.optim.AdamW(official_param_groups(model, pcfg["weight_decay"]), lr=lr,
                                  betas=(pcfg["beta1"], pcfg["beta2"]))
    dataset = MemoryImages(train_set.images.permute(0, 2, 3, 1).contiguous().numpy(),  # H×W×C, as CIFAR
                           train_set.labels.numpy(), official_transform(img_size, train_set.mean, train_set.std))
    length = model.patch_embed.num_patches
    len_keep = length - masking.num_masked(length, ratio)  # the token count of our path (see module doc)

    def loader(epoch: int):
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(epoch))
        return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=batch, num_workers=workers,
                                           pin_memory=device.type == "cuda", drop_last=True)

    if data:
        batches = Cycle(loader)
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

    name = ("pretrain_official" if fused_attn else "pretrain_plain") if data else "ablation:plain_without_data"
    kind = Kind(name, step, batch, device)
    kind.info = {"data": f"DataLoader, {workers} workers, per-sample PIL transforms (bicubic)" if data
                 else "one batch, transformed once", "optimizer": "AdamW (default: single-tensor loop on CPU)",
                 "precision": "fp16 autocast + GradScaler" if amp else "fp32",
                 "attention": "fused (today's timm)" if fused_attn else "explicit (timm 0.3.2)",
                 "visible_tokens": len_keep, "decoder_predicts": length}
    return kind
