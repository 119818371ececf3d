"""MAE: a ViT encoder that sees only the visible patches and a lightweight decoder.

Built from timm's parts (PatchEmbed, Block) with the parameter names of timm's
VisionTransformer (`patch_embed`, `cls_token`, `pos_embed`, `blocks`, `norm`), so
`encoder_state_dict()` loads straight into `timm.models.vision_transformer.VisionTransformer`
for the evals. Position embeddings are fixed 2-D sin-cos, as in the paper. The mask comes
from outside (bench.masking): a B×L boolean tensor with the same count in every row.
"""
from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


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


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=1024, depth=24, num_heads=16,
                 decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, mlp_ratio=4.0,
                 target_dim: int | None = None):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.patch_size, self.in_chans = patch_size, in_chans
        # encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.grid = int(num_patches ** 0.5)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed(embed_dim, self.grid, True), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_embed_dim, self.grid, True),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, target_dim or patch_size ** 2 * in_chans)
        self.initialize_weights()

    def initialize_weights(self):
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # like nn.Linear, as MAE
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×L×(p·p·C), patches in row-major order (MAE's layout)."""
        p = self.patch_size
        return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        return rearrange(x, "b (h w) (p q c) -> b c (h p) (w q)", h=self.grid, p=p, q=p)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor):
        """Encode the visible patches only. Returns latent (B×(1+V)×D) and ids_restore (B×L)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        batch, length, dim = x.shape
        # visible patches first (in position order), then the masked ones
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        num_visible = length - int(mask[0].sum())
        ids_keep = ids_shuffle[:, :num_visible]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(batch, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        batch, length = ids_restore.shape
        mask_tokens = self.mask_token.expand(batch, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on the masked patches only, and the prediction (B×L×target_dim)."""
        latent, ids_restore = self.forward_encoder(imgs, mask)
        pred = self.forward_decoder(latent, ids_restore)
        loss = target.loss(pred, target(self.patchify(imgs)), mask)
        return loss, pred

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm VisionTransformer's names."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(("decoder_", "mask_token"))}


def build_mae(model_cfg: dict, img_size: int, in_chans: int, target_dim: int | None = None) -> MaskedAutoencoderViT:
    keys = ("patch_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth",
            "decoder_num_heads", "mlp_ratio")
    return MaskedAutoencoderViT(img_size=img_size, in_chans=in_chans, target_dim=target_dim,
                                **{k: model_cfg[k] for k in keys})
