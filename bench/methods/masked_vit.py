"""A ViT that sees every patch, the masked ones replaced by a learned [M] token, and a light head
that predicts each masked patch's target from the encoder's output: BEiT's and SimMIM's model.

    encoder  timm's PatchEmbed and Blocks under timm VisionTransformer's parameter names
             (`patch_embed`, `cls_token`, `pos_embed`, `blocks`, `norm`), fixed 2-D sin-cos
             positions as MAE's, so the evals load it like MAE's encoder (bench.methods.vit);
             [M] (`mask_token`) plus the patch's position replaces a masked patch's embedding;
             stochastic depth `drop_path` (BEiT pre-trains with 0.1)
    head     linear   one linear layer per token (BEiT's LM head to the vocabulary; SimMIM's 1×1
                      projection to the patch's pixels, whose pixel shuffle is our unpatchify)
             mlp      Linear → GELU → Linear, as wide as the encoder (SimMIM's 2-layer MLP head)
             decoder  a small transformer over all tokens (decoder_* numbers), then a linear layer

The loss is the target's (bench.targets) on the masked patches, or on all patches with
`loss_on_all` (BEiT Table 4 "recover 100%", SimMIM's full reconstruction). With full_pred=False
the head runs on the scored patches only: the same loss and gradients for less work.

`MaskedViTMethod` is the method interface (bench.methods) both papers' classes share.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from bench.core.patches import patchify, unpatchify
from bench.methods.mae import Attention, init_linear_and_norm, sincos_pos_embed
from bench.methods.vit import ViTMethod


def transformer_flops(blocks, tokens: int) -> float:
    """Forward FLOPs (2 × multiply-adds) of timm Blocks over `tokens` tokens."""
    total = 0.0
    for blk in blocks:
        width, hidden = blk.attn.qkv.in_features, blk.mlp.fc1.out_features
        total += tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens * tokens * width
    return 2 * total


class Head(nn.Module):
    """What predicts a token's target from the encoder's output token: linear, mlp or decoder."""

    def __init__(self, kind: str, dim: int, out_dim: int, decoder: dict | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.pred = nn.Linear(dim, out_dim)
        elif kind == "mlp":
            self.hidden = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
            self.pred = nn.Linear(dim, out_dim)
        elif kind == "decoder":
            width = decoder["decoder_embed_dim"]
            norm_layer = partial(nn.LayerNorm, eps=1e-6)
            self.embed = nn.Linear(dim, width)
            self.pos_embed = nn.Parameter(sincos_pos_embed(width, decoder["grid"], True), requires_grad=False)
            self.blocks = nn.ModuleList([Block(width, decoder["decoder_num_heads"], mlp_ratio, qkv_bias=True,
                                               norm_layer=norm_layer, attn_layer=Attention)
                                         for _ in range(decoder["decoder_depth"])])
            self.norm = norm_layer(width)
            self.pred = nn.Linear(width, out_dim)
        else:
            raise ValueError(f"unknown head {kind!r}")

    def forward(self, tokens: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """tokens: the encoder's output, B×(1+L)×D with the cls token first. The prediction of
        the patches at `rows` (B×M indices into L, or None: all L), B×M×out_dim."""
        if self.kind == "decoder":  # mixes tokens: runs on all of them, then keeps the rows
            x = self.embed(tokens) + self.pos_embed
            for blk in self.blocks:
                x = blk(x)
            tokens = self.norm(x)
        x = tokens[:, 1:, :]
        if rows is not None:
            x = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        if self.kind == "mlp":
            x = self.hidden(x)
        return self.pred(x)

    def flops(self, tokens: int, scored: int) -> float:
        """Forward FLOPs per image: over 1 + L tokens, predicting `scored` patches."""
        total = 2 * scored * self.pred.in_features * self.pred.out_features
        if self.kind == "mlp":
            total += 2 * scored * self.pred.in_features ** 2
        if self.kind == "decoder":
            total += 2 * tokens * self.embed.in_features * self.embed.out_features
            total += transformer_flops(self.blocks, tokens)
        return total


class MaskedViT(nn.Module):
    """The encoder over all patches with [M] for the masked ones, and its head."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 mlp_ratio: float, out_dim: int, head: str = "linear", decoder: dict | None = None,
                 drop_path: float = 0.0, loss_on_all: bool = False):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size, self.loss_on_all = patch_size, loss_on_all
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid = int(self.patch_embed.num_patches ** 0.5)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, self.grid, True), requires_grad=False)
        rates = torch.linspace(0, drop_path, depth).tolist()  # stochastic depth rising with depth, as timm
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
                                           drop_path=rate, attn_layer=Attention) for rate in rates])
        self.norm = norm_layer(embed_dim)
        self.head = Head(head, embed_dim, out_dim, {**(decoder or {}), "grid": self.grid}, mlp_ratio)
        self.initialize_weights()

    def initialize_weights(self):
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_linear_and_norm)  # MAE's

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.patch_embed.proj.in_channels)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """B×(1+L)×D: the cls token, then every patch — a masked one as [M] plus its position."""
        x = self.patch_embed(imgs)
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, target,
                full_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on the scored patches (the masked ones; all with loss_on_all) and the
        prediction: B×L×out_dim, or with full_pred=False the scored patches' only (B×M×out_dim)."""
        scored = torch.ones_like(mask) if self.loss_on_all else mask
        counts = scored.sum(dim=1)
        if scored.shape[0] > 1 and bool((counts != counts[0]).any()):
            raise ValueError(f"the mask has unequal counts per row ({int(counts.min())}..{int(counts.max())} "
                             f"of {scored.shape[1]}); every image must have the same number of scored patches")
        tokens = self.forward_encoder(imgs, mask)
        targets = target.targets(imgs, self)  # B×L×D, or B×L token ids
        if full_pred:
            pred = self.head(tokens, None)
            return target.loss(pred, targets, scored), pred
        rows = scored.nonzero()[:, 1].view(scored.shape[0], -1)
        pred = self.head(tokens, rows)
        targets = targets[scored].view(pred.shape[0], pred.shape[1], *targets.shape[2:])
        return target.loss(pred, targets, torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)), pred

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm VisionTransformer's names (no [M], no head)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(("head.", "mask_token"))}

    def flops_per_image(self, mask_ratio: float) -> dict[str, float]:
        """Forward FLOPs per image by part: the encoder always runs on 1 + L tokens."""
        from bench.masking import num_masked

        length = self.patch_embed.num_patches
        embed = self.patch_embed.proj.weight
        encoder = 2 * length * embed[0].numel() * embed.shape[0] + transformer_flops(self.blocks, 1 + length)
        scored = length if self.loss_on_all else num_masked(length, mask_ratio)
        head = self.head.flops(1 + length, scored)
        return {"encoder": encoder, "decoder": head, "total": encoder + head}


class MaskedViTMethod(ViTMethod):
    """The method interface (bench.methods) of a MaskedViT: built from the resolved config."""

    name = "masked_vit"

    def build_model(self, cfg: dict, in_chans: int, target) -> MaskedViT:
        m, pcfg = cfg["model"], cfg["pretrain"]
        decoder = {k: m[k] for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")}
        model = MaskedViT(cfg["data"]["img_size"], m["patch_size"], in_chans, m["embed_dim"], m["depth"],
                          m["num_heads"], m["mlp_ratio"], target.out_dim(m["patch_size"] ** 2 * in_chans),
                          head=m["head"], decoder=decoder, drop_path=pcfg.get("drop_path", 0.0),
                          loss_on_all=pcfg.get("loss_on") == "all")
        return model
