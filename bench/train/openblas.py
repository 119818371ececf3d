"""fp32 linear layers and attention on numpy's OpenBLAS, for the CPU threads that run one part of a step each.

    use_openblas_linear(model)   every nn.Linear in `model` becomes an OpenBlasLinear (the same
                                 Parameter objects, the same state_dict keys); returns how many
    OpenBlasLinear               nn.Linear whose forward and backward matrix products go through
                                 numpy (OpenBLAS sgemm) when the call runs on the CPU in fp32 on one
                                 torch thread, and through torch's F.linear otherwise
    use_openblas_attention(model) every timm / bench.methods.mae Attention becomes an
                                 OpenBlasAttention (the same submodules and parameters); returns how many
    OpenBlasAttention            softmax(q kᵀ/√d) v by numpy where OpenBlasLinear would take the call:
                                 q kᵀ and p v (and the four products of backward) one sgemm per sample
                                 and head, read from and written into the qkv layout the linear layer
                                 makes, so no q/k/v permutes or gradient stacks; otherwise timm's own
                                 (torch's fused attention)

Why: a step split over threads (bench.train.parts) runs each part on one core, and 70% of a small
ViT's step is its linear layers' matrix products. On the CPUs measured here (AMD EPYC, AVX2 and
AVX-512) torch's own single-threaded sgemm runs those shapes (a few thousand tokens × 128–1536)
10–35% slower than the OpenBLAS numpy ships; `mimbench bench speed --ablations` measures the step
with and without (`ablation:fast_torch_linear`). Attention over a few dozen tokens is a handful of
tiny products per head, where torch's fused CPU kernel (built for long sequences: blocks of queries,
an online softmax, its probabilities recomputed in backward) spends 2–5× the FLOPs' time: the
explicit form — the probabilities kept for backward, which at these lengths is a few MB — on
OpenBLAS is faster (`ablation:fast_torch_attention`). The math is the same fp32 product; only the
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
from timm.models.vision_transformer import Attention as TimmAttention
from torch import nn
from torch.nn import functional as F

from bench.methods.mae import Attention


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
    return _swap(model, (nn.Linear,), OpenBlasLinear.of)


def _swap(model: nn.Module, kinds: tuple[type, ...], make) -> int:
    """Replace every child of exactly a class in `kinds` by make(child); how many (0 without OpenBLAS)."""
    if not openblas_ready():
        return 0
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in kinds:
                setattr(module, name, make(child))
                count += 1
    return count


def _heads(t: torch.Tensor, scale: float | None = None) -> np.ndarray:
    """A (B, L, heads, d) view → a contiguous (B, heads, L, d) array (times `scale` if given)."""
    out = torch.empty(t.shape[0], t.shape[2], t.shape[1], t.shape[3], dtype=t.dtype)
    if scale is None:
        out.copy_(t.detach().transpose(1, 2))
    else:
        torch.mul(t.detach().transpose(1, 2), scale, out=out)
    return out.numpy()


def _by_head(t: torch.Tensor) -> np.ndarray:
    """A (B, L, heads, d) tensor seen as a (B, heads, L, d) array (a view: writes land in `t`)."""
    return t.numpy().transpose(0, 2, 1, 3)


class _AttentionByNumpy(torch.autograd.Function):
    """softmax(q kᵀ/√d) v per sample and head, in the token-major layout a qkv linear writes:
    apply(qkv) with qkv (B, L, 3, heads, d), or apply(q, kv) with q (B, M, heads, d) and kv
    (B, L, 2, heads, d) (queries at M rows only); returns (B, M, heads, d). Backward writes the
    gradients straight into tensors of the inputs' shapes: dv = pᵀ g, dp = g vᵀ,
    ds = p ⊙ (dp − Σ dp ⊙ p), dq = ds k / √d, dk = dsᵀ q / √d."""

    @staticmethod
    def forward(ctx, q_or_qkv: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        if kv is None:
            q, k, v = q_or_qkv.unbind(2)
        else:
            q, (k, v) = q_or_qkv, kv.unbind(2)
        scale = q.shape[-1] ** -0.5
        qs, kh, vh = _heads(q, scale), _heads(k), _heads(v)  # q pre-scaled: s = (q/√d) kᵀ
        s = torch.empty(*qs.shape[:3], kh.shape[2])
        np.matmul(qs, kh.transpose(0, 1, 3, 2), out=s.numpy())
        p = torch.softmax(s, -1)
        out = torch.empty(q.shape)
        np.matmul(p.numpy(), vh, out=_by_head(out))
        ctx.save_for_backward(p)
        ctx.heads, ctx.scale, ctx.shapes = (qs, kh, vh), scale, (q_or_qkv.shape, None if kv is None else kv.shape)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (p,), (qs, kh, vh) = ctx.saved_tensors, ctx.heads
        g = _heads(grad)
        first = torch.empty(ctx.shapes[0])
        second = None if ctx.shapes[1] is None else torch.empty(ctx.shapes[1])
        if second is None:
            dq, dk, dv = (_by_head(t) for t in first.unbind(2))
        else:
            dq, (dk, dv) = _by_head(first), (_by_head(t) for t in second.unbind(2))
        p_ = p.numpy()
        np.matmul(p_.transpose(0, 1, 3, 2), g, out=dv)
        dp = torch.empty_like(p)
        np.matmul(g, vh.transpose(0, 1, 3, 2), out=dp.numpy())
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype).numpy()  # the gradient of s
        np.matmul(ds.transpose(0, 1, 3, 2), qs, out=dk)  # q was pre-scaled
        np.matmul(ds, kh, out=dq)
        dq *= ctx.scale
        return first, second


class OpenBlasAttention(Attention):
    """timm's attention (bench.methods.mae.Attention's layout) with its products on OpenBLAS
    where that is the faster path (see the module doc); timm's forward otherwise."""

    @classmethod
    def of(cls, attn: TimmAttention) -> "OpenBlasAttention":
        """An OpenBlasAttention holding `attn`'s own submodules and parameters."""
        new = cls.__new__(cls)
        new.__dict__.update(vars(attn))
        return new

    def takes(self, x: torch.Tensor) -> bool:
        """Plain attention (no qk norm, mask or dropout) in a call OpenBlasLinear would take."""
        return (self.plain() and isinstance(self.q_norm, nn.Identity) and isinstance(self.k_norm, nn.Identity)
                and OpenBlasLinear.takes(x, self.qkv.weight))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal or not self.takes(x):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, self.head_dim)
        x = _AttentionByNumpy.apply(qkv).view(batch, length, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(x)))

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if not self.takes(x):
            return super().forward_rows(x, rows)
        batch, length, dim = x.shape
        n, heads, head_dim = self.attn_dim, self.num_heads, self.head_dim
        weight, bias = self.qkv.weight, self.qkv.bias
        linear = _LinearByNumpy.apply if isinstance(self.qkv, OpenBlasLinear) else F.linear
        kv = linear(x, weight[n:], None if bias is None else bias[n:]).view(batch, length, 2, heads, head_dim)
        x = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, dim))
        q = linear(x, weight[:n], None if bias is None else bias[:n]).view(batch, rows.shape[1], heads, head_dim)
        x = _AttentionByNumpy.apply(q, kv).view(batch, rows.shape[1], n)
        return self.proj_drop(self.proj(self.norm(x)))


def use_openblas_attention(model: nn.Module) -> int:
    """Replace every attention of timm's or bench.methods.mae's class (exactly those) in `model` by an
    OpenBlasAttention sharing its parameters; returns how many (0 when numpy has no OpenBLAS)."""
    return _swap(model, (TimmAttention, Attention), OpenBlasAttention.of)


def use_openblas(model: nn.Module, layers: tuple[str, ...] = ("linear", "attention")) -> dict:
    """Put `model`'s linear layers and / or attention on OpenBLAS; returns how many of each."""
    return {"linear": use_openblas_linear(model) if "linear" in layers else 0,
            "attention": use_openblas_attention(model) if "attention" in layers else 0}
