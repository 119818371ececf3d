"""fp32 linear layers on numpy's OpenBLAS, for the CPU threads that run one part of a step each.

    use_openblas_linear(model)   every nn.Linear in `model` becomes an OpenBlasLinear (the same
                                 Parameter objects, the same state_dict keys); returns how many
    OpenBlasLinear               nn.Linear whose forward and backward matrix products go through
                                 numpy (OpenBLAS sgemm) when the call runs on the CPU in fp32 on one
                                 torch thread, and through torch's F.linear otherwise

Why: a step split over threads (bench.train.parts) runs each part on one core, and 70% of a small
ViT's step is its linear layers' matrix products. On the CPUs measured here (AMD EPYC, AVX2 and
AVX-512) torch's own single-threaded sgemm runs those shapes (a few thousand tokens × 128–1536)
10–35% slower than the OpenBLAS numpy ships; `mimbench bench speed --ablations` measures the step
with and without (`ablation:fast_torch_linear`). The math is the same fp32 product; only the
summation order inside the kernel differs (rounding). numpy releases the interpreter lock in its
matmul, so the parts' products run at once.

The swap sets OpenBLAS to one thread for the process (threadpoolctl): each part is one core, and
two parts each asking OpenBLAS for two threads would fight over the cores. numpy's other products
in the process (small: masks, PCA) then run on one thread too. Without an OpenBLAS under numpy
(another BLAS, or none), nothing is swapped.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@functools.cache
def openblas_ready() -> bool:
    """Whether numpy's BLAS is OpenBLAS; if so it is set to one thread (once, for the process)."""
    from threadpoolctl import ThreadpoolController

    controller = ThreadpoolController().select(internal_api="openblas")
    if not controller.lib_controllers:
        return False
    controller.limit(limits=1)
    return True


def _product(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_t.T (2-D, float32, CPU) by numpy into a tensor torch allocated."""
    out = torch.empty(a.shape[0], b_t.shape[0], dtype=a.dtype)
    np.matmul(a.numpy(), b_t.numpy().T, out=out.numpy())
    return out


class _LinearByNumpy(torch.autograd.Function):
    """y = x Wᵀ + b; dx = g W, dW = gᵀ x, db = Σ g — each product one OpenBLAS sgemm."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.detach().reshape(-1, x.shape[-1]).contiguous()
        w = weight.detach()
        ctx.save_for_backward(rows, w)
        ctx.has_bias = bias is not None
        out = _product(rows, w)
        if bias is not None:
            out.add_(bias.detach())
        return out.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        rows, w = ctx.saved_tensors
        g = grad.reshape(-1, w.shape[0]).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _product(g, w.t()).view(*grad.shape[:-1], w.shape[1])
        if ctx.needs_input_grad[1]:
            grad_w = _product(g.t(), rows.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


class OpenBlasLinear(nn.Linear):
    """nn.Linear computed by OpenBLAS where that is the faster path (see the module doc)."""

    @classmethod
    def of(cls, linear: nn.Linear) -> "OpenBlasLinear":
        """An OpenBlasLinear holding `linear`'s own Parameter objects (optimisers keep working)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight, new.bias = linear.weight, linear.bias
        new.train(linear.training)
        return new

    @staticmethod
    def takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether this call goes through OpenBLAS: CPU fp32 tensors, no autocast, one torch thread."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu") and torch.get_num_threads() == 1 and x.numel() > 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.takes(x, self.weight):
            return _LinearByNumpy.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_openblas_linear(model: nn.Module) -> int:
    """Replace every nn.Linear in `model` (exactly that class) by an OpenBlasLinear sharing its
    parameters; returns how many (0 when numpy has no OpenBLAS)."""
    if not openblas_ready():
        return 0
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, OpenBlasLinear.of(child))
                count += 1
    return count
