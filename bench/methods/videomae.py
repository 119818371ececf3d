"""VideoMAE (Tong, Song, Wang, Wang: "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
Self-Supervised Video Pre-Training", NeurIPS 2022; arXiv:2203.12602; code MCG-NJU/VideoMAE, read for
the algorithm — modeling_pretrain.py, modeling_finetune.py — not copied).

    cubes     a clip B×C×T×H×W is cut into cubes of tubelet_size frames × patch_size² px: a Conv3d
              whose kernel is its stride gives one token per cube, T' = T / tubelet_size time steps
              of h × w tokens, N = T'·h·w in all, time-major (t, row, column) — the order of the
              masks (bench.masking with frames=T', flattened) and of `patchify`.
    positions fixed: VideoMAE's 1-D sinusoid table over the N tokens (its
              get_sinusoid_encoding_table), the encoder's and, at the decoder's width, the decoder's.
              No cls token: the evals mean-pool the tokens.
    encoder   timm Blocks over the visible cubes only (tube masking at 90%, the paper's default,
              leaves 10%), then a LayerNorm.
    decoder   a linear map to decoder_embed_dim (no bias, as the official encoder_to_decoder), the
              visible tokens plus a learned mask token for every masked cube, each with its
              position, decoder_depth Blocks, a LayerNorm, and a linear head to a cube's
              tubelet·p·p·C pixels — computed for the masked cubes only unless asked for all.
    loss      the target's on the masked cubes (loss_on all: every cube). norm_pixel normalises
              each cube by its own mean and std (VideoMAE's normalised target; the official one
              normalises per channel within the cube, ours over the cube's numbers, MAE's way).

`VideoViT` is the classifier the evals load the encoder into (the official fine-tuning model with
mean pooling): the same cube embedding, positions and blocks, the mean of all N output tokens →
fc_norm → head. `VideoMAE` at the bottom is the method as the registry (bench.methods) hands it out.
"""
from __future__ import annotations

from functools import partial

import torch
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.methods.mae import Attention, init_linear_and_norm


def sinusoid_table(tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed 1-D position table (1 × tokens × dim): token n, channel j gets
    sin (j even) or cos (j odd) of n / 10000^(2·⌊j/2⌋ / dim)."""
    position = torch.arange(tokens, dtype=torch.float64).unsqueeze(1)
    channel = torch.arange(dim)
    angles = position / 10000 ** (2 * (channel // 2) / dim)
    return torch.where(channel % 2 == 0, angles.sin(), angles.cos()).float().unsqueeze(0)


class CubeEmbed(nn.Module):
    """B×C×T×H×W → B×N×D, one token per tubelet × p × p cube, time-major."""

    def __init__(self, in_chans: int, embed_dim: int, tubelet: int, patch: int):
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, (tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.proj(clips).flatten(2).transpose(1, 2)


def blocks(dim: int, depth: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0) -> nn.ModuleList:
    """`depth` timm Blocks (pre-norm, qkv bias; VideoMAE pre-trains without layer scale), stochastic
    depth rising linearly to `drop_path`."""
    rates = torch.linspace(0, drop_path, depth).tolist()
    return nn.ModuleList([Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                drop_path=rate, attn_layer=Attention) for rate in rates])


class VideoMAEModel(nn.Module):
    def __init__(self, img_size: int, frames: int, patch_size: int, tubelet_size: int, in_chans: int,
                 embed_dim: int, depth: int, num_heads: int, decoder_embed_dim: int, decoder_depth: int,
                 decoder_num_heads: int, mlp_ratio: float, target_dim: int | None = None, drop_path: float = 0.0,
                 loss_on_all: bool = False):
        super().__init__()
        self.patch_size, self.tubelet_size, self.in_chans = patch_size, tubelet_size, in_chans
        self.grid = (frames // tubelet_size, img_size // patch_size, img_size // patch_size)  # T', h, w
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.loss_on_all = loss_on_all
        # encoder
        self.patch_embed = CubeEmbed(in_chans, embed_dim, tubelet_size, patch_size)
        self.register_buffer("pos_embed", sinusoid_table(self.num_tokens, embed_dim), persistent=False)
        self.blocks = blocks(embed_dim, depth, num_heads, mlp_ratio, drop_path)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed", sinusoid_table(self.num_tokens, decoder_embed_dim),
                             persistent=False)
        self.decoder_blocks = blocks(decoder_embed_dim, decoder_depth, decoder_num_heads, mlp_ratio)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, target_dim or tubelet_size * patch_size ** 2 * in_chans)
        self.apply(init_linear_and_norm)  # VideoMAE's: xavier-uniform linears, unit LayerNorms
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def patchify(self, clips: torch.Tensor) -> torch.Tensor:
        """B×C×T×H×W → B×N×(tubelet·p·p·C): each cube's pixels (t, row, column, channel), cubes
        in token order."""
        u, p = self.tubelet_size, self.patch_size
        return rearrange(clips, "b c (t u) (h p) (w q) -> b (t h w) (u p q c)", u=u, p=p, q=p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        t, h, w = self.grid
        u, p = self.tubelet_size, self.patch_size
        return rearrange(x, "b (t h w) (u p q c) -> b c (t u) (h p) (w q)", t=t, h=h, w=w, u=u, p=p, q=p)

    def forward_encoder(self, clips: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The visible cubes' tokens through the encoder: B×V×D, in position order."""
        counts = mask.sum(dim=1)
        if mask.shape[0] > 1 and bool((counts != counts[0]).any()):
            raise ValueError(f"the mask has unequal counts per row ({int(counts.min())}..{int(counts.max())} "
                             f"masked of {mask.shape[1]}); every clip must hide the same number of cubes")
        x = self.patch_embed(clips) + self.pos_embed
        x = x[~mask].view(x.shape[0], -1, x.shape[2])
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor, every_cube: bool) -> torch.Tensor:
        """The prediction of the masked cubes (B×M×target_dim, position order), or of every cube
        (B×N×target_dim) with every_cube."""
        batch, dim = latent.shape[0], self.mask_token.shape[2]
        pos = self.decoder_pos_embed.expand(batch, -1, -1)
        visible = self.decoder_embed(latent) + pos[~mask].view(batch, -1, dim)
        masked = self.mask_token + pos[mask].view(batch, -1, dim)
        x = torch.cat([visible, masked], dim=1)  # visible cubes first, then the masked ones
        for blk in self.decoder_blocks:
            x = blk(x)
        if not every_cube:
            return self.decoder_pred(self.decoder_norm(x[:, visible.shape[1]:]))
        pred = self.decoder_pred(self.decoder_norm(x))
        order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # the concatenation's positions
        return torch.gather(pred, 1, torch.argsort(order, dim=1).unsqueeze(-1).expand(-1, -1, pred.shape[2]))

    def forward(self, clips: torch.Tensor, mask: torch.Tensor, target,
                full_pred: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss on the masked cubes only (every cube with loss_on_all), and the prediction: of the
        masked cubes (B×M×target_dim), or with full_pred of every cube (B×N×target_dim)."""
        latent = self.forward_encoder(clips, mask)
        targets = target.targets(clips, self)  # B×N×D
        if self.loss_on_all or full_pred:
            pred = self.forward_decoder(latent, mask, every_cube=True)
            return target.loss(pred, targets, torch.ones_like(mask) if self.loss_on_all else mask), pred
        pred = self.forward_decoder(latent, mask, every_cube=False)
        targets = targets[mask].view(pred.shape[0], pred.shape[1], *targets.shape[2:])
        return target.loss(pred, targets, torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device)), pred

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (patch_embed, blocks, norm), as VideoViT names them."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(("decoder_", "mask_token"))}

    @torch.no_grad()
    def flops_per_image(self, mask_ratio: float) -> dict[str, float]:
        """Forward FLOPs of one clip, by part, counted by torch's FlopCounterMode (the matmuls,
        attention and the cube embedding), with the masked cubes' predictions only."""
        from bench.masking import num_masked

        device = self.pos_embed.device
        t, h, w = self.grid
        clips = torch.zeros(1, self.in_chans, t * self.tubelet_size, h * self.patch_size, w * self.patch_size,
                            device=device)
        mask = torch.zeros(1, self.num_tokens, dtype=torch.bool, device=device)
        mask[0, :num_masked(self.num_tokens, mask_ratio)] = True
        with FlopCounterMode(display=False) as enc:
            latent = self.forward_encoder(clips, mask)
        with FlopCounterMode(display=False) as dec:
            self.forward_decoder(latent, mask, every_cube=False)
        encoder, decoder = float(enc.get_total_flops()), float(dec.get_total_flops())
        return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


class VideoViT(nn.Module):
    """The evals' video classifier (bench.train.evals.EvalEncoder) over VideoMAE's encoder: the
    mean of the N output tokens → fc_norm → head. The pre-trained final `norm` is not used (the
    official fine-tuning with mean pooling replaces it by fc_norm)."""

    no_weight_decay_names = ()  # the positions are a fixed buffer; 1-D parameters skip decay anyway

    def __init__(self, cfg: dict, num_classes: int, in_chans: int, drop_path: float = 0.0):
        super().__init__()
        m, frames, side = cfg["model"], cfg["data"]["frames"], cfg["data"]["img_size"]
        tokens = (frames // m["tubelet_size"]) * (side // m["patch_size"]) ** 2
        self.patch_embed = CubeEmbed(in_chans, m["embed_dim"], m["tubelet_size"], m["patch_size"])
        self.register_buffer("pos_embed", sinusoid_table(tokens, m["embed_dim"]), persistent=False)
        self.blocks = blocks(m["embed_dim"], m["depth"], m["num_heads"], m["mlp_ratio"], drop_path)
        self.num_features = m["embed_dim"]
        self.fc_norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_state(cls, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int,
                   drop_path: float = 0.0) -> "VideoViT":
        model = cls(cfg, num_classes, in_chans, drop_path)
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}
        result = model.load_state_dict(encoder_state, strict=False)
        if set(result.missing_keys) - {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} \
                or result.unexpected_keys:
            raise RuntimeError(f"encoder weights do not fit VideoMAE's ViT: {result}")
        return model

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """The mean-pooled, normalised feature of each clip (B×num_features)."""
        x = self.patch_embed(clips) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(clips))

    @property
    def num_layers(self) -> int:
        """Layer ids run 0 (the cube embedding) .. num_layers (fc_norm and the head)."""
        return len(self.blocks) + 1

    def layer_id(self, name: str) -> int:
        if name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers

    def freeze_for_partial_finetune(self, blocks: float | None) -> None:
        """As the ViT's (MAE Figure 9): only the last `blocks` blocks (0.5: the last one's norm2 + mlp),
        fc_norm and the head are tuned; None: all."""
        if blocks is None:
            return
        self.requires_grad_(False)
        tuned = [self.blocks[-1].norm2, self.blocks[-1].mlp] if blocks == 0.5 else \
            list(self.blocks[len(self.blocks) - int(blocks):])
        for module in tuned + [self.fc_norm, self.head]:
            module.requires_grad_(True)


class VideoMAE:
    """The method interface (bench.methods): clips in, masks on the T'×h×w cube grid."""

    name = "videomae"

    def build_model(self, cfg: dict, in_chans: int, target) -> VideoMAEModel:
        m, pcfg = cfg["model"], cfg["pretrain"]
        keys = ("patch_size", "tubelet_size", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
                "decoder_depth", "decoder_num_heads", "mlp_ratio")
        cube_dim = m["tubelet_size"] * m["patch_size"] ** 2 * in_chans
        return VideoMAEModel(img_size=cfg["data"]["img_size"], frames=cfg["data"]["frames"], in_chans=in_chans,
                             target_dim=target.out_dim(cube_dim), drop_path=pcfg.get("drop_path", 0.0),
                             loss_on_all=pcfg.get("loss_on") == "all", **{k: m[k] for k in keys})

    def mask_grid(self, cfg: dict) -> tuple[int, int, int]:
        side = cfg["data"]["img_size"] // cfg["model"]["patch_size"]
        return cfg["data"]["frames"] // cfg["model"]["tubelet_size"], side, side

    def encoder_state(self, model: VideoMAEModel) -> dict[str, torch.Tensor]:
        return model.encoder_state_dict()

    def eval_encoder(self, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                     drop_path: float = 0.0) -> VideoViT:
        if feature != "avgpool":
            raise ValueError(f"feature {feature!r}: VideoMAE has no cls token; allowed: avgpool")
        return VideoViT.from_state(cfg, encoder_state, num_classes, in_chans, drop_path)

    def flops_per_image(self, model: VideoMAEModel, ratio: float) -> dict[str, float]:
        return model.flops_per_image(ratio)
