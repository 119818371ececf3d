"""SparK's sparse convolution, emulated on dense tensors (Tian et al. 2023, section 3.1): while a
mask is active (`active_mask`), every convolution, pooling and per-position norm of the encoder
multiplies its output by the visible cells upsampled to its resolution, so masked positions stay
exactly zero through every stage, and BatchNorm computes its statistics over the visible
positions only (`SparseBatchNorm2d`). Module classes and parameter names are unchanged: the
weights load into timm's plain model for the evals.

The mask is held per thread (bench.train.pretrain.SplitStep runs sub-batches in threads on one
model), B×1×h×w bool on the last stage's grid, True = visible.
"""
from __future__ import annotations

import torch
from timm.layers import LayerNorm2d
from timm.models.convnext import ConvNeXtBlock
from torch import nn

from bench.core.scoped import ThreadScoped

_VISIBLE = ThreadScoped()


def active_mask(visible: torch.Tensor | None):
    """Within the block, the sparse modules mask with `visible` (B×1×h×w bool; None: dense)."""
    return _VISIBLE.using(visible)


def visible_at(height: int, width: int) -> torch.Tensor | None:
    """The active mask upsampled to a height × width map (B×1×H×W bool), or None when none is active."""
    visible = _VISIBLE.get()
    if visible is None:
        return None
    h, w = visible.shape[-2:]
    if height % h or width % w:
        raise ValueError(f"a {height}x{width} map does not tile the {h}x{w} mask grid")
    return visible.repeat_interleave(height // h, dim=2).repeat_interleave(width // w, dim=3)


def _mask_output(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    visible = visible_at(*output.shape[-2:])
    return output if visible is None else output * visible.to(output.dtype)


class SparseBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the visible positions only (running statistics too); masked positions 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        visible = visible_at(*x.shape[-2:])
        if visible is None:
            return super().forward(x)
        keep = visible[:, 0]                                       # B×H×W
        rows = x.permute(0, 2, 3, 1)[keep]                         # N×C, the visible positions
        normed = super().forward(rows[:, :, None, None])[:, :, 0, 0]
        out = normed.new_zeros(x.shape[0], x.shape[2], x.shape[3], x.shape[1])  # normed's dtype (autocast)
        out = out.masked_scatter(keep.unsqueeze(-1).expand_as(out), normed)
        return out.permute(0, 3, 1, 2)


MASKED_OUTPUT = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, LayerNorm2d, ConvNeXtBlock)


def sparsify(encoder: nn.Module) -> nn.Module:
    """Make `encoder` sparse in place: BatchNorm2d → SparseBatchNorm2d (same parameters and
    buffers), and the output of every conv, pooling, LayerNorm2d and ConvNeXt block masked (a
    ConvNeXt block's channels-last LayerNorm and MLP work per position; its output is masked)."""
    for module in encoder.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = SparseBatchNorm2d
        elif isinstance(module, MASKED_OUTPUT):
            module.register_forward_hook(_mask_output)
    return encoder
