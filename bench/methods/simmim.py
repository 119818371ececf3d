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
"""
from __future__ import annotations

from bench.methods.masked_vit import MaskedViTMethod


class SimMIM(MaskedViTMethod):
    name = "simmim"
