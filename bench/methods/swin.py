"""SimMIM's Swin Transformer (Xie et al. 2022, the paper's main model): timm's SwinTransformer
with a learned [M] on the patch-embed grid and the paper's one-layer prediction head.

    encoder  timm's `SwinTransformer` (its patch embed with norm, stages with shifted windows and
             patch merging, final norm) under timm's parameter names; a masked patch's embedding
             is replaced by [M] (`mask_token`) before the first stage. There is no absolute
             position embedding (the windows' relative position bias places every token), and the
             patch embed is a convolution with stride = patch, so nothing of a masked patch's
             pixels reaches the encoder.
    head     (`decoder`, as the official code names it) the last stage's feature map, stride
             s = patch × 2^(stages − 1), through a 1×1 conv to s²·C channels and PixelShuffle(s):
             the reconstructed image, patchified to the model's patches (B×L×p²C) so the target
             scores it as it scores a ViT's (pretrain.loss l1 = SimMIM's L1 on the masked
             pixels / channels; loss_on all). A target of another width D (pca, hog, tokens)
             gets (s/p)²·D channels and PixelShuffle(s/p): D values per model patch.

The head is a 1×1 conv over the whole map: every patch is predicted (`full_pred` changes
nothing) and the loss keeps the scored ones. Masks are drawn on the patch-embed grid (the
method's `mask_grid`); SimMIM's 32 px mask patches on 4 px patches are `coarse` masking with
scale 8.

`SwinEncoder` is the evals' classifier over those weights (bench.train.evals.EvalEncoder): the
feature is the average-pooled final feature map (a Swin has no cls token: `resolve` rejects
feature cls with a Swin preset), layer ids for layer-wise lr decay as the official fine-tune's.
"""
from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformer
from torch import nn

from bench.core.patches import patchify, unpatchify
from bench.methods import preset


def is_swin(cfg: dict) -> bool:
    """True when the config's model preset is a Swin (the preset's `arch`)."""
    return preset(cfg["model"]["preset"]).get("arch") == "swin"


def _swin_args(cfg: dict, in_chans: int) -> dict:
    m = cfg["model"]
    return dict(img_size=cfg["data"]["img_size"], patch_size=m["patch_size"], in_chans=in_chans,
                embed_dim=m["embed_dim"], depths=tuple(m["depths"]), num_heads=tuple(m["stage_num_heads"]),
                window_size=m["window_size"], mlp_ratio=m["mlp_ratio"])


class SimMIMSwin(SwinTransformer):
    """timm's Swin with [M] on the patch grid and SimMIM's 1×1 conv + pixel shuffle head."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depths: tuple,
                 num_heads: tuple, window_size: int, mlp_ratio: float, out_dim: int, drop_path: float = 0.0,
                 loss_on_all: bool = False):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                         embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
                         mlp_ratio=mlp_ratio, drop_path_rate=drop_path)
        self.patch_size, self.loss_on_all = patch_size, loss_on_all
        self.stride = patch_size * 2 ** (len(depths) - 1)  # of the last stage's feature map
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.pixels = out_dim == patch_size ** 2 * in_chans  # a pixel-wide target: the paper's image head
        shuffle = self.stride if self.pixels else self.stride // patch_size
        channels = shuffle ** 2 * (in_chans if self.pixels else out_dim)
        self.decoder = nn.Sequential(nn.Conv2d(self.num_features, channels, kernel_size=1), nn.PixelShuffle(shuffle))

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.in_chans)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last stage's normalised feature map, B×C×h×w; mask: B×L bool on the patch grid."""
        x = self.patch_embed(imgs)  # B×H×W×D (timm's Swin runs NHWC)
        masked = mask.view(x.shape[0], x.shape[1], x.shape[2], 1)
        x = torch.where(masked, self.mask_token.to(x.dtype), x)
        x = self.norm(self.layers(x))
        return x.permute(0, 3, 1, 2)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Every patch's prediction from the feature map: B×L×(p²C) pixels, or B×L×D."""
        out = self.decoder(features)
        if self.pixels:  # the reconstructed image, B×C×H×W, cut into the model's patches
            return self.patchify(out)
        return out.flatten(2).transpose(1, 2)  # B×D×gh×gw: D values per patch

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, target,
                full_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on the masked patches (all with loss_on_all) and the prediction of all, B×L×D."""
        scored = torch.ones_like(mask) if self.loss_on_all else mask
        pred = self.predict(self.forward_encoder(imgs, mask))
        return target.loss(pred, target.targets(imgs, self), scored), pred

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under timm SwinTransformer's names (no [M], no head)."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()
                if not k.startswith(("decoder.", "mask_token", "head."))}

    def flops_per_image(self, mask_ratio: float) -> dict[str, float]:
        """Forward FLOPs (2 × multiply-adds of the matmuls and convs) per image, by part. The encoder
        and head run on every patch whatever the ratio; norms, softmax and GELU are left out."""
        h, w = self.patch_embed.grid_size
        proj = self.patch_embed.proj
        encoder = h * w * proj.weight[0].numel() * proj.out_channels
        for stage in self.layers:
            if not isinstance(stage.downsample, nn.Identity):  # patch merging: 4C → 2C per merged token
                h, w = (h + 1) // 2, (w + 1) // 2
                encoder += h * w * stage.downsample.reduction.in_features * stage.downsample.reduction.out_features
            for blk in stage.blocks:
                dim, hidden, tokens = blk.attn.qkv.in_features, blk.mlp.fc1.out_features, h * w
                # qkv + proj, the MLP, and q·k and attn·v within each window
                encoder += tokens * (4 * dim * dim + 2 * dim * hidden) + 2 * tokens * blk.window_area * dim
        conv = self.decoder[0]
        head = h * w * conv.in_channels * conv.out_channels
        return {"encoder": 2.0 * encoder, "decoder": 2.0 * head, "total": 2.0 * (encoder + head)}


def build_model(cfg: dict, in_chans: int, target) -> SimMIMSwin:
    """The config's Swin, its head as wide as the target asks of a patch."""
    pcfg, patch = cfg["pretrain"], cfg["model"]["patch_size"]
    return SimMIMSwin(**_swin_args(cfg, in_chans), out_dim=target.out_dim(patch ** 2 * in_chans),
                      drop_path=pcfg.get("drop_path", 0.0), loss_on_all=pcfg.get("loss_on") == "all")


class SwinEncoder(SwinTransformer):
    """timm's Swin classifier for the evals: the pre-trained encoder, a new linear `head` over the
    average-pooled final feature map."""

    @classmethod
    def from_state(cls, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                   drop_path: float = 0.0) -> "SwinEncoder":
        if feature != "avgpool":
            raise ValueError(f"feature {feature!r}: a Swin has no cls token; allowed: avgpool")
        swin = cls(num_classes=num_classes, drop_path_rate=drop_path, **_swin_args(cfg, in_chans))
        result = swin.load_state_dict(encoder_state, strict=False)
        if set(result.missing_keys) - {"head.weight", "head.bias"} or result.unexpected_keys:
            raise RuntimeError(f"encoder weights do not fit timm's Swin: {result}")
        return swin

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes=0, **kwargs)  # timm's pooling head, replaced by a plain linear one
        depths = kwargs["depths"]
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.head.bias)
        self.block_offsets = [sum(depths[:i]) for i in range(len(depths))]
        self.num_layers = sum(depths) + 1  # timm's attribute (the stage count, used by __init__ only) renamed

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(1, 2))  # B×H×W×C → the average-pooled feature
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, pre-head feature of each image (B×num_features)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def layer_id(self, name: str) -> int:
        """The official SimMIM fine-tune's ids: embeddings 0, the j-th block of stage i its running
        index + 1, a stage's patch merging that of the block before it, the rest num_layers."""
        if name.startswith("patch_embed"):
            return 0
        if name.startswith("layers."):
            parts = name.split(".")
            stage = int(parts[1])
            if parts[2] == "downsample":
                return self.block_offsets[stage]
            return self.block_offsets[stage] + int(parts[3]) + 1
        return self.num_layers

    @property
    def no_weight_decay_names(self) -> tuple[str, ...]:
        """The relative position bias tables (Swin's no_weight_decay_keywords)."""
        return tuple(n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table"))

    def freeze_for_partial_finetune(self, blocks: float | None) -> None:
        if blocks is not None:
            raise NotImplementedError("evals.finetune.blocks: partial fine-tuning (MAE Figure 9) counts a ViT's "
                                      "blocks; a Swin preset takes null")
