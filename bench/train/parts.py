"""A batch's rows split over CPU threads, and the per-sample draws that keep such a split exact.

    PartPool        runs a function on row ranges of a batch, one range per thread of one core
                    each (`map`: inference, the pieces in order), or adds the ranges' gradients
                    to every .grad in a fixed order (`backward`)
    batch_backward  the gradient of a batch's loss as `accum` micro-batches one after another
                    (gradient accumulation; DDP's no_sync before the last), each split over the
                    pool's threads
    RowDropPath     stochastic depth (timm's DropPath) whose keep-or-drop of each sample is read
                    from uniforms drawn once per step for the whole batch and cut with its rows
                    (`row_draws`), so a step split over threads, micro-batches or DDP ranks drops
                    the same samples as one forward of the whole batch, whatever the threads'
                    order; `use_row_drop_path(model)` puts it in place of every timm DropPath

Why split: a step of a small model is many small operations (layer norm, GELU, bias) that lose
more to splitting one tensor across cores than they gain; one sub-batch per core avoids that
(README, "Speed"). Each part weights its loss by its share of the batch, so the parts' summed
gradients are the batch's gradient to float rounding.

Grad mode, inference mode and autocast are per thread in torch: `map` and `backward` carry the
caller's grad and inference modes into the pool's threads; a part that wants autocast enters it.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch
from torch import nn

from bench.core.scoped import ThreadScoped

MAX_CPU_PARTS = 8  # more Python threads than this would queue on the interpreter lock (unmeasured)


class PartPool:
    """`parts` threads, each running one row range of a batch with one core's share of torch's threads."""

    def __init__(self, parts: int):
        self.parts = max(1, parts)
        self.pool = ThreadPoolExecutor(self.parts, thread_name_prefix="mimbench-part") if self.parts > 1 else None

    @staticmethod
    def parts_for(device: torch.device | str, world: int) -> int:
        """One part per torch thread on the CPU of a single-process run; 1 elsewhere (GPUs, DDP ranks)."""
        if torch.device(device).type != "cpu" or world > 1:
            return 1
        return max(1, min(torch.get_num_threads(), MAX_CPU_PARTS))

    def edges(self, lo: int, hi: int) -> list[int]:
        parts = max(1, min(self.parts, hi - lo))
        return [lo + i * (hi - lo) // parts for i in range(parts + 1)]

    def _run(self, fn: Callable[[int, int], object], lo: int, hi: int) -> list:
        edges = self.edges(lo, hi)
        if len(edges) == 2:
            return [fn(lo, hi)]
        grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

        def part(i: int):
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(edges[i], edges[i + 1])

        threads = torch.get_num_threads()  # a process-wide setting: one core per part meanwhile
        torch.set_num_threads(max(1, threads // (len(edges) - 1)))
        try:
            return list(self.pool.map(part, range(len(edges) - 1)))
        finally:
            torch.set_num_threads(threads)

    def map(self, fn: Callable[[int, int], torch.Tensor], n: int) -> torch.Tensor:
        """fn(lo, hi) on rows 0:n, one range per thread; the results concatenated in row order."""
        pieces = self._run(fn, 0, n)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def backward(self, lo: int, hi: int, loss_of: Callable[[int, int], torch.Tensor], params: list) -> torch.Tensor:
        """Add the gradient of Σ loss_of(a, b) over rows lo:hi, cut into one range per thread, to every
        parameter's .grad (in range order: the same sum every time); return that loss, detached."""
        if len(self.edges(lo, hi)) == 2:
            loss = loss_of(lo, hi)
            loss.backward()  # accumulates into .grad (DDP's hooks run here)
            return loss.detach()

        def part(a: int, b: int):
            loss = loss_of(a, b)
            return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

        results = self._run(part, lo, hi)
        for j, p in enumerate(params):
            for g in (r[1][j] for r in results if r[1][j] is not None):
                p.grad = g if p.grad is None else p.grad.add_(g)
        loss = results[0][0]
        for r in results[1:]:
            loss = loss + r[0]
        return loss

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def batch_backward(pool: PartPool, model: nn.Module, n: int, accum: int,
                   loss_of: Callable[[int, int], torch.Tensor], params: list) -> torch.Tensor:
    """Every .grad += the gradient of Σ loss_of over rows 0:n, as `accum` micro-batches one after
    another (MAE's accum_iter: the memory of one, the update of all), each split over `pool`.
    `loss_of(lo, hi)` is rows lo:hi's share of the batch's loss (their loss × their weight). Under
    DDP (`model` has no_sync) the gradients are synchronised on the last micro-batch only."""
    accum = max(1, min(accum, n))
    edges = [i * n // accum for i in range(accum + 1)]
    loss = None
    for m in range(accum):
        last = m == accum - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            part = pool.backward(edges[m], edges[m + 1], loss_of, params)
        loss = part if loss is None else loss + part
    return loss


# ----------------------------------------------------------------------------- stochastic depth
_DRAWS = ThreadScoped()


def row_draws(uniforms: torch.Tensor | None):
    """While inside, this thread's RowDropPath layers read their samples' draws from `uniforms`
    (rows × layers, in [0, 1)); None: they draw from torch's global generator, as timm's do."""
    return _DRAWS.using(uniforms)


class RowDropPath(nn.Module):
    """timm's DropPath (drop a sample's residual branch with probability `drop_prob`, scale the kept
    ones by 1/keep) with the sample's draw read from column `index` of `row_draws`: sample i is kept
    when uniforms[i, index] < 1 - drop_prob."""

    def __init__(self, drop_prob: float, index: int, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob, self.index, self.scale_by_keep = drop_prob, index, scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        uniforms = _DRAWS.get()
        if uniforms is None:
            keep = x.new_empty((x.shape[0],)).bernoulli_(keep_prob)
        else:
            if uniforms.shape[0] != x.shape[0]:
                raise ValueError(f"row_draws holds {uniforms.shape[0]} rows for a batch of {x.shape[0]}")
            keep = (uniforms[:, self.index] < keep_prob).to(x.dtype)
        if keep_prob > 0.0 and self.scale_by_keep:
            keep = keep / keep_prob
        return x * keep.view(-1, *([1] * (x.ndim - 1)))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, index={self.index}"


def use_row_drop_path(model: nn.Module) -> int:
    """Replace every timm DropPath with drop probability > 0 in `model` by a RowDropPath (columns
    0, 1, … in module order); returns how many there are — the width of the step's draws."""
    from timm.layers import DropPath

    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, DropPath) and child.drop_prob > 0:
                setattr(module, name, RowDropPath(child.drop_prob, count, child.scale_by_keep))
                count += 1
    return count


def step_draws(model_layers: int, rows: int, gen: torch.Generator | None, device) -> torch.Tensor | None:
    """The step's stochastic-depth draws: rows × layers uniforms from `gen` (None without layers)."""
    if model_layers == 0:
        return None
    return torch.rand(rows, model_layers, generator=gen, device=device)
