"""BEiT (Bao, Dong, Piao, Wei: "BEiT: BERT Pre-Training of Image Transformers", ICLR 2022).

The encoder sees all L patches, the masked ones replaced by a learned [M] plus their position;
a linear head from its final tokens predicts each masked patch's visual token (cross-entropy
over the tokenizer's vocabulary, masked positions only); masks are block-wise at about 40%
(75 of 196 patches). The model is bench.methods.masked_vit; what is BEiT's is the recipe
(ablations/beit/_recipe.yaml, from the paper's section 2.5 and Table 12):

    ViT-B/16 at 224 px, 75 of 196 patches masked block-wise (min block 16), target: visual
    tokens; Adam β = (0.9, 0.999), lr 1.5e-3 at batch 2048, weight decay 0.05, 10 warmup epochs,
    cosine, stochastic depth 0.1, gradient clipping 3.0; fine-tune with layer decay 0.65

The tokenizer is the project's own (`dvae_token`: a per-patch VQ-VAE trained once on the training
set and cached, bench.targets.tokenizer); nothing is downloaded. A user with DALL-E's dVAE encoder
on disk can use BEiT's own tokenizer instead: `target: dalle_token` with
`target_params: {encoder_path: /path/to/encoder.pkl}` (bench.targets.dalle; never fetched). The paper's model is the plain
ViT of its Table 4 (the official code's default adds LayerScale and relative positions).
"""
from __future__ import annotations

from bench.methods.masked_vit import MaskedViTMethod


class BEiT(MaskedViTMethod):
    name = "beit"
