"""The ViT the evals fine-tune and probe: timm's VisionTransformer with the evals' interface.

Every ViT-based method (MAE, BEiT, SimMIM) hands its encoder's weights, under timm's names
(`patch_embed`, `cls_token`, `pos_embed`, `blocks`, `norm`), to `ViTEncoder.from_state`, as the
official code loads a pre-trained checkpoint into timm's ViT. The interface the evals use
(bench.train.evals.EvalEncoder): `features(x)` (pooled, pre-head), `forward(x)` (logits),
`num_features`, `layer_id(name)` / `num_layers` for layer-wise lr decay, and
`freeze_for_partial_finetune(blocks)` (MAE Figure 9). `ViTMethod` is the part of the method
interface (bench.methods) those methods share.
"""
from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

POOL = {"cls": "token", "avgpool": "avg"}


class ViTEncoder(VisionTransformer):
    """timm's ViT classifier; the head (and fc_norm for avgpool) is new, the rest pre-trained."""

    @classmethod
    def from_state(cls, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                   drop_path: float = 0.0) -> "ViTEncoder":
        m = cfg["model"]
        vit = cls(img_size=cfg["data"]["img_size"], patch_size=m["patch_size"], in_chans=in_chans,
                  num_classes=num_classes, embed_dim=m["embed_dim"], depth=m["depth"], num_heads=m["num_heads"],
                  mlp_ratio=m["mlp_ratio"], qkv_bias=True, global_pool=POOL[feature], drop_path_rate=drop_path,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
        result = vit.load_state_dict(encoder_state, strict=False)
        allowed_missing = {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
        allowed_unexpected = {"norm.weight", "norm.bias"} if feature == "avgpool" else set()
        if set(result.missing_keys) - allowed_missing or set(result.unexpected_keys) - allowed_unexpected:
            raise RuntimeError(f"encoder weights do not fit timm's ViT: {result}")
        return vit

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, pre-head feature of each image (B×num_features)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    @property
    def num_layers(self) -> int:
        """Layer ids run 0 (embeddings) .. num_layers (the head and final norms)."""
        return len(self.blocks) + 1

    def layer_id(self, name: str) -> int:
        """MAE's layer index for layer-wise decay: embeddings 0, block i → i + 1, the rest num_layers."""
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers

    no_weight_decay_names = ("pos_embed", "cls_token")

    def freeze_for_partial_finetune(self, blocks: float | None) -> None:
        """MAE Figure 9: tune only the last `blocks` blocks (0.5: the last block's norm2 + mlp, its
        MLP half; 0: none), the final norm (`norm`, or `fc_norm` for avgpool) and the head. None: all."""
        if blocks is None:
            return
        self.requires_grad_(False)
        if blocks == 0.5:
            tuned = [self.blocks[-1].norm2, self.blocks[-1].mlp]
        else:
            tuned = list(self.blocks[len(self.blocks) - int(blocks):])
        for module in tuned + [self.norm, self.fc_norm, self.head]:
            module.requires_grad_(True)


class ViTMethod:
    """The method interface's parts every ViT method shares (MAE, BEiT, SimMIM): masks on the patch
    grid, the encoder's weights from the model's `encoder_state_dict`, timm's ViT for the evals, and
    the model's own FLOP count. A method adds its name and `build_model`."""

    def mask_grid(self, cfg: dict) -> tuple[int, int]:
        side = cfg["data"]["img_size"] // cfg["model"]["patch_size"]
        return side, side

    def encoder_state(self, model) -> dict[str, torch.Tensor]:
        return model.encoder_state_dict()

    def eval_encoder(self, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                     drop_path: float = 0.0) -> ViTEncoder:
        return ViTEncoder.from_state(cfg, encoder_state, num_classes, in_chans, feature, drop_path)

    def flops_per_image(self, model, ratio: float) -> dict[str, float]:
        return model.flops_per_image(ratio)
