"""SimMIM (Xie, Zhang, Cao, Lin, Bao, Yao, Dai, Hu: "SimMIM: A Simple Framework for Masked Image
Modeling", CVPR 2022).

The encoder sees all patches, the masked ones replaced by a learned [M]; a one-layer linear
head (the paper's 1×1 convolution to stride² × 3 values and pixel shuffle — for a ViT, a linear
layer per token and unpatchify) regresses the raw pixels; the loss is L1 on the masked pixels
only; masks are random at a mask-patch size coarser than the model's patch (`coarse` masking,
`scale` = mask patch / model patch). The model is bench.methods.masked_vit; what is SimMIM's is
the recipe (ablations/simmim/_recipe.yaml, from the official configs):

    192 px, mask patch 32 px, ratio 0.6, 100 epochs, warmup 10, AdamW β = (0.9, 0.999), weight
    decay 0.05, base lr 2e-4 per 512 images (our blr is per 256: 1e-4), gradient clipping 5.0

Heads to compare (`model.head`): linear (the paper's), mlp (2 layers), decoder (a small
transformer, standing in for the paper's inverse-Swin heads).

A Swin preset (`arch: swin`: simmim_swin_tiny_patch2, the paper's simmim_swin_base_patch4)
builds the paper's main model instead, bench.methods.swin: timm's Swin Transformer with [M] on
the patch-embed grid, the last stage's map (stride 32 for Swin-B) through the 1×1 conv and
pixel shuffle; its evals run timm's Swin classifier (average-pooled feature). Only the linear
head; masks on the patch-embed grid (32 px mask patches on 4 px patches: coarse scale 8).
"""
from __future__ import annotations

from bench.methods import swin
from bench.methods.masked_vit import MaskedViTMethod


class SimMIM(MaskedViTMethod):
    """A masked ViT, or the Swin of bench.methods.swin when the preset is one. mask_grid (the
    patch grid), encoder_state and flops_per_image (the model's own) serve both."""

    name = "simmim"

    def build_model(self, cfg: dict, in_chans: int, target):
        if swin.is_swin(cfg):
            return swin.build_model(cfg, in_chans, target)
        return super().build_model(cfg, in_chans, target)

    def eval_encoder(self, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                     drop_path: float = 0.0):
        if swin.is_swin(cfg):
            return swin.SwinEncoder.from_state(cfg, encoder_state, num_classes, in_chans, feature, drop_path)
        return super().eval_encoder(cfg, encoder_state, num_classes, in_chans, feature, drop_path)
