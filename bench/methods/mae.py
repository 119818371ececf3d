"""MAE: a ViT encoder that sees only the visible patches and a lightweight decoder.

Built from timm's parts (PatchEmbed, Block) with the parameter names of timm's
VisionTransformer (`patch_embed`, `cls_token`, `pos_embed`, `blocks`, `norm`), so
`encoder_state_dict()` loads straight into `timm.models.vision_transformer.VisionTransformer`
for the evals. Position embeddings are fixed 2-D sin-cos, as in the paper. The mask comes
from outside (bench.masking): a B×L boolean tensor with the same count in every row.

With `mask_token_in_encoder` (MAE Table 1c "w/ [M]") the encoder sees all L patches, the masked
ones replaced by a learned token plus their position embedding; the decoder then needs no
mask tokens of its own. `flops_per_image()` counts what either variant costs.

`forward(..., full_pred=False)` computes only what the loss reads — the masked patches'
predictions — for the same loss and gradients with less work (see forward_decoder).

`MAE` at the bottom is the method as the registry (bench.methods) hands it out: the model
builder, the mask grid, the encoder the evals start from.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Attention as TimmAttention
from timm.models.vision_transformer import Block
from torch import nn

from bench.core.patches import patchify, unpatchify
from bench.methods.vit import ViTMethod


def sincos_pos_embed(dim: int, grid: int, cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, (1 + grid²) × dim with a zero row for the cls token."""
    assert dim % 4 == 0, "the sin-cos embedding needs a width divisible by 4"
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")

    def embed_1d(pos):
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    # MAE's order: the first half of the channels encodes the column (w), the second the row (h).
    emb = torch.cat([embed_1d(xs), embed_1d(ys)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


def init_linear_and_norm(m: nn.Module) -> None:
    """MAE's initialisation of one module: xavier-uniform linear weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class Attention(TimmAttention):
    """timm's attention — the same parameters, outputs and gradients, bit for bit — with q, k and v
    taken as views of qkv in its own (B, N, 3, heads, head_dim) layout: backward then stacks their
    gradients straight into that layout, where timm's permute costs one more copy of the qkv
    gradient in every block. Anything but plain fused attention goes to timm's forward."""

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal or not self.plain():
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = self.q_norm(q.transpose(1, 2)), self.k_norm(k.transpose(1, 2))
        x = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))
        x = self.norm(x.transpose(1, 2).reshape(batch, length, self.attn_dim))
        return self.proj_drop(self.proj(x))

    def plain(self) -> bool:
        """True when forward is plain fused attention (what `forward_rows` computes)."""
        return self.fused_attn and self.gate is None and not (self.training and self.attn_drop.p > 0)

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """forward(x) at the query rows `rows` (B×M indices) only: keys and values from every token."""
        batch, length, dim = x.shape
        n, heads, head_dim = self.attn_dim, self.num_heads, self.head_dim
        weight, bias = self.qkv.weight, self.qkv.bias
        k, v = F.linear(x, weight[n:], None if bias is None else bias[n:]).view(
            batch, length, 2, heads, head_dim).unbind(2)
        x = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, dim))
        q = F.linear(x, weight[:n], None if bias is None else bias[:n]).view(batch, rows.shape[1], heads, head_dim)
        q, k = self.q_norm(q.transpose(1, 2)), self.k_norm(k.transpose(1, 2))
        x = F.scaled_dot_product_attention(q, k, v.transpose(1, 2))
        x = self.norm(x.transpose(1, 2).reshape(batch, rows.shape[1], n))
        return self.proj_drop(self.proj(x))


def block_rows(blk: Block, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """blk(x) at the rows `rows` (B×M) only, when attention is all that mixes tokens (timm's Block)."""
    if not (isinstance(blk.attn, Attention) and blk.attn.plain()):
        return torch.gather(blk(x), 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    out = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[2]))
    out = out + blk.drop_path1(blk.ls1(blk.attn.forward_rows(blk.norm1(x), rows)))
    return out + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(out))))


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 target_dim: int | None = None, mask_token_in_encoder: bool = False, drop_path: float = 0.0,
                 loss_on_all: bool = False):
        super().__init__()
        self.mask_token_in_encoder, self.loss_on_all = mask_token_in_encoder, loss_on_all
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size, self.in_chans = patch_size, in_chans
        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.grid = int(num_patches ** 0.5)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, self.grid, True), requires_grad=False)
        rates = torch.linspace(0, drop_path, depth).tolist()  # stochastic depth (pretrain.drop_path; MAE: 0)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
                                           drop_path=rate, attn_layer=Attention) for rate in rates])
        self.norm = norm_layer(embed_dim)
        self.encoder_mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if mask_token_in_encoder else None
        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_embed_dim, self.grid, True),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer,
                  attn_layer=Attention) for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, target_dim or patch_size ** 2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self):
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear, as MAE
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.encoder_mask_token is not None:
            nn.init.normal_(self.encoder_mask_token, std=0.02)
        self.apply(init_linear_and_norm)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×L×(p·p·C), patches in row-major order (MAE's layout)."""
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.patch_embed.proj.in_channels)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor):
        """Encode the visible patches only. Returns latent (B×(1+V)×D) and ids_restore (B×L).
        With mask_token_in_encoder: all patches, masked ones as the mask token (B×(1+L)×D)."""
        counts = mask.sum(dim=1)
        if mask.shape[0] > 1 and bool((counts != counts[0]).any()):
            raise ValueError(f"the mask has unequal counts per row ({int(counts.min())}..{int(counts.max())} "
                             f"masked of {mask.shape[1]}); every image must hide the same number of patches")
        x = self.patch_embed(imgs)
        batch, length, dim = x.shape
        if self.encoder_mask_token is not None:
            x = torch.where(mask.unsqueeze(-1), self.encoder_mask_token.to(x.dtype), x) + self.pos_embed[:, 1:, :]
            cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(batch, -1, -1)
            x = torch.cat([cls, x], dim=1)
            for blk in self.blocks:
                x = blk(x)
            ids_restore = torch.arange(length, device=x.device).expand(batch, -1)
            return self.norm(x), ids_restore
        x = x + self.pos_embed[:, 1:, :]
        # visible patches first (in position order), then the masked ones
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        num_visible = length - int(counts[0])
        ids_keep = ids_shuffle[:, :num_visible]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction of every patch (B×L×target_dim); with `mask`, of the masked ones only
        (B×M×target_dim, in position order). Every block but the last still runs on all L + 1
        tokens; the last one computes its queries, MLP, norm and projection only for the masked
        patches — the only ones the loss reads — with keys and values from all tokens."""
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        if mask is None:
            for blk in self.decoder_blocks:
                x = blk(x)
            return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        for blk in self.decoder_blocks[:-1]:
            x = blk(x)
        ids_masked = mask.nonzero()[:, 1].view(batch, -1) + 1  # +1: after the cls token
        x = block_rows(self.decoder_blocks[-1], x, ids_masked)
        return self.decoder_pred(self.decoder_norm(x))

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, target,
                full_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on the masked patches only, and the prediction: B×L×target_dim, or with
        full_pred=False only the masked patches' (B×M×target_dim, in position order) — the same
        loss and gradients for less work, as the loss never reads the visible patches."""
        latent, ids_restore = self.forward_encoder(imgs, mask)
        targets = target.targets(imgs, self)  # B×L×D, or B×L token ids
        if self.loss_on_all:  # pretrain.loss_on all: every patch is scored
            pred = self.forward_decoder(latent, ids_restore)
            return target.loss(pred, targets, torch.ones_like(mask)), pred
        if full_pred:
            pred = self.forward_decoder(latent, ids_restore)
            loss = target.loss(pred, targets, mask)
            return loss, pred
        pred = self.forward_decoder(latent, ids_restore, mask)
        targets = targets[mask].view(pred.shape[0], pred.shape[1], *targets.shape[2:])
        loss = target.loss(pred, targets, torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device))
        return loss, pred

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm VisionTransformer's names (a ViT has no mask token)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(("decoder_", "mask_token", "encoder_mask_token"))}

    def flops_per_image(self, mask_ratio: float) -> dict[str, float]:
        """Forward FLOPs (2 × multiply-adds of the matmuls and attention) per image, by part."""
        length = self.patch_embed.num_patches
        visible = length - round(mask_ratio * length)
        embed = self.patch_embed.proj.weight
        dim, patch_dim = embed.shape[0], embed[0].numel()

        def blocks(module_list, tokens: int) -> float:
            total = 0.0
            for blk in module_list:
                width, hidden = blk.attn.qkv.in_features, blk.mlp.fc1.out_features
                total += tokens * (4 * width * width + 2 * width * hidden) + 2 * tokens * tokens * width
            return 2 * total

        enc_tokens = 1 + (length if self.encoder_mask_token is not None else visible)
        dec_dim = self.decoder_embed.out_features
        encoder = 2 * length * patch_dim * dim + blocks(self.blocks, enc_tokens)
        decoder = (2 * enc_tokens * dim * dec_dim + blocks(self.decoder_blocks, 1 + length)
                   + 2 * length * dec_dim * self.decoder_pred.out_features)
        return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def build_mae(model_cfg: dict, img_size: int, in_chans: int, target_dim: int | None = None, drop_path: float = 0.0,
              loss_on_all: bool = False) -> MaskedAutoencoderViT:
    keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
            "decoder_num_heads", "mlp_ratio")
    return MaskedAutoencoderViT(img_size=img_size, in_chans=in_chans, target_dim=target_dim,
                                mask_token_in_encoder=model_cfg.get("mask_token_in_encoder", False),
                                drop_path=drop_path, loss_on_all=loss_on_all, **{k: model_cfg[k] for k in keys})


class MAE(ViTMethod):
    """MAE as a mimbench method: the model above, masks on its patch grid, timm's ViT for the evals."""

    name = "mae"

    def build_model(self, cfg: dict, in_chans: int, target) -> MaskedAutoencoderViT:
        patch_dim = cfg["model"]["patch_size"] ** 2 * in_chans
        pcfg = cfg["pretrain"]
        return build_mae(cfg["model"], cfg["data"]["img_size"], in_chans, target.out_dim(patch_dim),
                         drop_path=pcfg.get("drop_path", 0.0), loss_on_all=pcfg.get("loss_on") == "all")
