"""SparK (Tian, Jiang, Wang, Huang, Kuang, Yuan, Wang: "Designing BERT for Convolutional Networks:
Sparse and Hierarchical Masked Modeling", ICLR 2023; arXiv:2301.03580; code keyu-tian/SparK, read
for the algorithm — pretrain/encoder.py, decoder.py, spark.py — not copied).

    encoder  a timm CNN (ResNet or ConvNeXt; the preset's `backbone`, `depths`, `embed_dim`) whose
             masks are drawn on its last stage's grid (stride S = patch_size: 32 → 7×7 at 224 px,
             the tiny presets' 8 → 4×4 at 32 px). sparse (the paper's): the masked cells are zeroed
             in the input and every conv / pool / norm output is re-masked at its resolution
             (bench.methods.spark_sparse), BatchNorm over the visible positions only: masked
             positions stay exactly zero through every stage. sparse=false (zero-outing): the same
             zeroed pixels through a plain dense CNN.
    decoder  bench.methods.spark_decoder: every stage's map densified with a learned mask token
             per scale (densify) and projected, a light UNet upsampling to the image
             (hierarchical; single-scale: the last stage's map only).
    loss     the target's (norm_pixel: MSE on per-patch normalised pixels, patches = mask cells)
             on the masked cells only (loss_on all: every cell).

The evals load the encoder into timm's plain model (`CNNEncoder`): the feature is the globally
average-pooled last-stage map, layer ids are the stem (0) and the stages (1..n) for depth-wise lr
decay over stages. LAMB and the weight-decay schedule are the loop's (pretrain.optimizer lamb,
pretrain.weight_decay_end).
"""
from __future__ import annotations

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.core.patches import patchify, unpatchify
from bench.methods.spark_decoder import SparKDecoder
from bench.methods.spark_sparse import active_mask, sparsify


def create_cnn(cfg: dict, in_chans: int, num_classes: int = 0, drop_path: float = 0.0) -> nn.Module:
    """The config's timm CNN (no pre-trained weights): the preset's stages when it sets them."""
    m = cfg["model"]
    extra = {}
    if m["depths"] is not None:
        widths = tuple(m["embed_dim"] << i for i in range(len(m["depths"])))
        depths = tuple(m["depths"])
        extra = dict(layers=depths, channels=widths) if m["backbone"].startswith("resnet") \
            else dict(depths=depths, dims=widths)
    if m["backbone"].startswith("convnext"):  # its stem's patch sets the stride: 4 (→ 32) or 1 (→ 8)
        extra["patch_size"] = m["patch_size"] // 8
    return timm.create_model(m["backbone"], pretrained=False, num_classes=num_classes, in_chans=in_chans,
                             drop_path_rate=drop_path, **extra)


def stem_and_stages(net: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The modules before the first stage, and the stages (a ResNet's layer1.., a ConvNeXt's stages)."""
    if hasattr(net, "stages"):
        return [net.stem], list(net.stages)
    stages = []
    while hasattr(net, f"layer{len(stages) + 1}"):
        stages.append(getattr(net, f"layer{len(stages) + 1}"))
    return [net.conv1, net.bn1, net.act1, net.maxpool], stages


def stage_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's output map, first to last (strides 4, 8, ..)."""
    stem, stages = stem_and_stages(net)
    for module in stem:
        x = module(x)
    features = []
    for stage in stages:
        x = stage(x)
        features.append(x)
    return features


class SparKModel(nn.Module):
    """The sparse (or zero-outing) CNN encoder and the densify + UNet decoder."""

    def __init__(self, cfg: dict, in_chans: int, out_dim: int, drop_path: float = 0.0, loss_on_all: bool = False):
        super().__init__()
        m = cfg["model"]
        self.patch_size, self.in_chans, self.loss_on_all = m["patch_size"], in_chans, loss_on_all
        self.img_size = cfg["data"]["img_size"]
        self.sparse = m["sparse"]
        self.encoder = create_cnn(cfg, in_chans, drop_path=drop_path)
        if self.sparse:
            sparsify(self.encoder)
        _, stages = stem_and_stages(self.encoder)
        with torch.no_grad():  # the stages' widths and strides, from a dry run at one mask cell × 2
            probe = torch.zeros(1, in_chans, 2 * self.patch_size, 2 * self.patch_size)
            shapes = [f.shape for f in stage_features(self.encoder.eval(), probe)]
            self.encoder.train()
        channels = [s[1] for s in shapes]
        strides = [2 * self.patch_size // s[-1] for s in shapes]
        if strides[-1] != self.patch_size:
            raise ValueError(f"{m['backbone']}'s last stage has stride {strides[-1]}, not model.patch_size "
                             f"{self.patch_size}")
        pixels = out_dim == self.patch_size ** 2 * in_chans
        self.decoder = SparKDecoder(channels, strides, m["decoder_embed_dim"], in_chans,
                                    None if pixels else out_dim, densify=m["densify"], hierarchical=m["hierarchical"])
        self.pixels, self.num_stages = pixels, len(stages)
        self.strides = strides

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        return unpatchify(x, self.patch_size, self.in_chans)

    def visible_grid(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """B×1×h×w bool, True = visible, on the last stage's grid."""
        h, w = imgs.shape[-2] // self.patch_size, imgs.shape[-1] // self.patch_size
        return (~mask).view(mask.shape[0], 1, h, w)

    def forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> tuple[list, list]:
        """The stages' maps and each one's visible positions (B×1×H_i×W_i bool)."""
        visible = self.visible_grid(imgs, mask)
        up = lambda v, s: v.repeat_interleave(self.patch_size // s, 2).repeat_interleave(self.patch_size // s, 3)
        x = imgs * up(visible, 1).to(imgs.dtype)  # the masked cells' pixels never enter
        with active_mask(visible if self.sparse else None):
            features = stage_features(self.encoder, x)
        return features, [up(visible, s) for s in self.strides]

    def predict(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every cell's prediction, B×L×(S²C) pixels (or B×L×D)."""
        features, visible = self.forward_encoder(imgs, mask)
        with active_mask(self.visible_grid(imgs, mask) if self.sparse else None):
            out = self.decoder(features, visible)  # its densify BN: over the visible positions when sparse
        return self.patchify(out) if self.pixels else out.flatten(2).transpose(1, 2)

    def forward(self, imgs: torch.Tensor, mask: torch.Tensor, target,
                full_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss on the masked cells (all with loss_on_all) and every cell's prediction."""
        scored = torch.ones_like(mask) if self.loss_on_all else mask
        pred = self.predict(imgs, mask)
        return target.loss(pred, target.targets(imgs, self), scored), pred

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The CNN's weights under timm's names (no decoder, no mask tokens)."""
        return {k[len("encoder."):]: v.detach().clone() for k, v in self.state_dict().items()
                if k.startswith("encoder.")}

    @torch.no_grad()
    def flops_per_image(self, mask_ratio: float) -> dict[str, float]:
        """Forward FLOPs of one image, by part, counted by torch's FlopCounterMode (convs and
        matmuls). Dense emulation: the encoder costs the same whatever the ratio."""
        from bench.masking import num_masked

        training = self.training
        self.eval()
        try:
            side = self.img_size // self.patch_size
            device = next(self.parameters()).device
            imgs = torch.zeros(1, self.in_chans, self.img_size, self.img_size, device=device)
            mask = torch.zeros(1, side * side, dtype=torch.bool, device=device)
            mask[0, :num_masked(side * side, mask_ratio)] = True
            with FlopCounterMode(display=False) as enc:
                features, visible = self.forward_encoder(imgs, mask)
            with FlopCounterMode(display=False) as dec, \
                    active_mask(self.visible_grid(imgs, mask) if self.sparse else None):
                self.decoder(features, visible)
        finally:
            self.train(training)
        encoder, decoder = float(enc.get_total_flops()), float(dec.get_total_flops())
        return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


class CNNEncoder(nn.Module):
    """timm's CNN for the evals: the pre-trained stages, a new linear `head` over the globally
    average-pooled last-stage map."""

    def __init__(self, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, drop_path: float = 0.0):
        super().__init__()
        self.net = create_cnn(cfg, in_chans, drop_path=drop_path)
        result = self.net.load_state_dict(encoder_state, strict=False)
        if any(not k.startswith("head.") for k in result.missing_keys) or result.unexpected_keys:
            raise RuntimeError(f"encoder weights do not fit timm's {cfg['model']['backbone']}: {result}")
        self.num_features = self.net.num_features
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.zeros_(self.head.bias)
        _, stages = stem_and_stages(self.net)
        self.num_layers = len(stages) + 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled, pre-head feature of each image (B×num_features)."""
        return stage_features(self.net, x)[-1].mean(dim=(2, 3))  # timm's forward_features assumes 4 stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def layer_id(self, name: str) -> int:
        """Depth-wise lr decay over stages: the stem 0, stage i (from 1) i, the rest num_layers."""
        name = name.removeprefix("net.")
        if name.startswith("stages."):
            return int(name.split(".")[1]) + 1
        if name.startswith("layer"):
            return int(name.split(".")[0][len("layer"):])
        if name.startswith(("stem", "conv1", "bn1")):
            return 0
        return self.num_layers

    no_weight_decay_names = ()

    def freeze_for_partial_finetune(self, blocks: float | None) -> None:
        if blocks is not None:
            raise NotImplementedError("evals.finetune.blocks: partial fine-tuning counts a ViT's blocks; a CNN "
                                      "preset takes null")


class SparK:
    """The method interface (bench.methods)."""

    name = "spark"

    def build_model(self, cfg: dict, in_chans: int, target) -> SparKModel:
        pcfg, patch = cfg["pretrain"], cfg["model"]["patch_size"]
        return SparKModel(cfg, in_chans, target.out_dim(patch ** 2 * in_chans), drop_path=pcfg.get("drop_path", 0.0),
                          loss_on_all=pcfg.get("loss_on") == "all")

    def mask_grid(self, cfg: dict) -> tuple[int, int]:
        side = cfg["data"]["img_size"] // cfg["model"]["patch_size"]  # the last stage's grid
        return side, side

    def encoder_state(self, model: SparKModel) -> dict[str, torch.Tensor]:
        return model.encoder_state_dict()

    def eval_encoder(self, cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                     drop_path: float = 0.0) -> CNNEncoder:
        if feature != "avgpool":
            raise ValueError(f"feature {feature!r}: a CNN has no cls token; allowed: avgpool")
        return CNNEncoder(cfg, encoder_state, num_classes, in_chans, drop_path)

    def flops_per_image(self, model: SparKModel, ratio: float) -> dict[str, float]:
        return model.flops_per_image(ratio)
