"""SparK's decoder side (Tian et al. 2023, section 3.3; the official pretrain/spark.py and
decoder.py were read for the algorithm, this is written anew): densify each scale's sparse
feature map, then a light UNet that upsamples it back to the image.

    densify  per encoder stage i: its map (zero at masked positions when the encoder is sparse)
             through BatchNorm over the visible positions (`SparseBatchNorm2d`), the masked
             positions filled with a learned mask token of that stage (`mask_tokens[i]`), then a
             projection conv (1×1 at the last stage, 3×3 at the others) to the decoder's width
             at that scale. densify=False: the projection alone, the holes stay zero.
    decoder  from the last stage's stride S: log2(S) blocks, each ×2 up (a 4×4 transposed conv)
             then conv3×3 · BN · ReLU6 · conv3×3 · BN, the width halving per block
             (decoder_embed_dim → decoder_embed_dim / S); before block k the densified map of the
             stage at that stride is added (hierarchical; single-scale: the last stage's only).
             A 1×1 conv makes the image (C channels); a target of another width D per patch gets
             a conv of kernel and stride S to D channels instead (D values per mask cell).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from bench.methods.spark_sparse import SparseBatchNorm2d


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class UpBlock(nn.Module):
    """×2 upsampling, then two 3×3 convs: cin → cout channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1)
        self.convs = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin),
                                   nn.ReLU6(inplace=True), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(self.up(x))


class SparKDecoder(nn.Module):
    """Densify + light UNet. `stage_channels`/`stage_strides`: the encoder's stages, first to last."""

    def __init__(self, stage_channels: list[int], stage_strides: list[int], width: int, out_chans: int,
                 out_dim: int | None = None, densify: bool = True, hierarchical: bool = True):
        super().__init__()
        stride = stage_strides[-1]
        self.levels = round(math.log2(stride))
        widths = [width >> k for k in range(self.levels + 1)]
        # decoder level k runs at stride S / 2^k; the stages it takes, deepest first
        used = list(range(len(stage_channels)))[::-1] if hierarchical else [len(stage_channels) - 1]
        self.level_of = {i: round(math.log2(stride // stage_strides[i])) for i in used}
        self.densify, self.hierarchical = densify, hierarchical
        self.stages = used
        self.norms = nn.ModuleDict({str(i): SparseBatchNorm2d(stage_channels[i]) for i in used}) if densify else None
        self.mask_tokens = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, stage_channels[i], 1, 1)) for i in used]) if densify else None
        self.projs = nn.ModuleDict({
            str(i): nn.Conv2d(stage_channels[i], widths[self.level_of[i]], kernel_size=1 if k == 0 else 3,
                              padding=0 if k == 0 else 1) for k, i in enumerate(used)})
        self.blocks = nn.ModuleList([UpBlock(widths[k], widths[k + 1]) for k in range(self.levels)])
        if out_dim is None:  # the image itself
            self.out = nn.Conv2d(widths[-1], out_chans, kernel_size=1)
        else:  # D values per S×S cell
            self.out = nn.Conv2d(widths[-1], out_dim, kernel_size=stride, stride=stride)
        _init(self)
        if densify:
            for token in self.mask_tokens:
                nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)

    def densified(self, features: list[torch.Tensor], visible: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Each used stage's map, holes filled (densify) and projected: {decoder level: B×w×h×w}."""
        out = {}
        for k, i in enumerate(self.stages):
            x = features[i]
            if self.densify:
                x = self.norms[str(i)](x)  # statistics over the visible positions (their mask is active)
                x = torch.where(visible[i], x, self.mask_tokens[k].to(x.dtype))
            out[self.level_of[i]] = self.projs[str(i)](x)
        return out

    def forward(self, features: list[torch.Tensor], visible: list[torch.Tensor]) -> torch.Tensor:
        """features: the stages' maps; visible: B×1×h×w bool per stage. The image, B×C×H×W (or
        B×D×H/S×W/S)."""
        skips = self.densified(features, visible)
        x = skips[0]
        for k, block in enumerate(self.blocks):
            if k > 0 and k in skips:
                x = x + skips[k]
            x = block(x)
        if self.levels in skips:  # a stage at stride 1 (a ConvNeXt with a 1 px stem patch)
            x = x + skips[self.levels]
        return self.out(x)
