"""Optimisation pieces of MAE's recipe: the lr schedule, weight-decay groups, layer-wise lr decay, LARS.

- lr = blr × batch / 256, linear warmup then half-cycle cosine to min_lr, set every iteration.
- Pre-training: AdamW (or LAMB, SparK's: `pretrain_optimizer`) on two groups — no weight decay for
  biases and 1-D parameters (norms); the decay constant, or on a cosine to an end value
  (`weight_decay_at`, SparK's 0.04 → 0.2).
- Fine-tuning: layer-wise lr decay — block i gets lr × decay^(depth + 1 - (i + 1)), the
  patch embedding, cls token and position embedding decay^(depth + 1), the head lr × 1.
- Linear probing: LARS (layer-wise adaptive rate scaling, trust coefficient 0.001, no decay on
  1-D parameters), as the paper uses for its large-batch probe.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def scaled_lr(blr: float, batch_size: int) -> float:
    return blr * batch_size / 256


def lr_at(epoch: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at a fractional epoch: linear warmup, then half-cycle cosine."""
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def weight_decay_at(epoch: float, start: float, end: float, epochs: float) -> float:
    """Weight decay at a fractional epoch: half-cycle cosine from `start` to `end` over the run
    (SparK: 0.04 → 0.2, rising)."""
    progress = min(max(epoch / max(epochs, 1e-12), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float, groups: list[int]) -> None:
    """Set the weight decay of the param groups at indices `groups` (the decayed ones)."""
    for i in groups:
        optimizer.param_groups[i]["weight_decay"] = weight_decay


def pretrain_optimizer(name: str, groups: list[dict], lr: float, betas: tuple) -> torch.optim.Optimizer:
    """The pre-training optimizer: AdamW (fused where possible) or LAMB (SparK; timm's Lamb with
    its own global-norm clipping off: pretrain.clip_grad clips, as for AdamW)."""
    if name == "adamw":
        return fused_adamw(groups, lr, betas=betas)[0]
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=betas, max_grad_norm=None)
    raise ValueError(f"unknown optimizer {name!r}; allowed: adamw, lamb")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decay for weight matrices, none for biases and 1-D parameters (as timm/MAE)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def layer_decay_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """Parameter groups with lr_scale = layer_decay ** (num_layers - layer_id) (MAE's param_groups_lrd).
    The model says each parameter's depth (`layer_id(name)`, 0 .. `num_layers`) and which ones
    skip weight decay (`no_weight_decay_names`, besides 1-D ones): a ViT's blocks, a CNN's stages."""
    num_layers = model.num_layers
    no_weight_decay = tuple(getattr(model, "no_weight_decay_names", ()))
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name in no_weight_decay
        lid = model.layer_id(name)
        group = groups.setdefault((lid, no_decay), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (num_layers - lid)})
        group["params"].append(param)
    return list(groups.values())


class LARS(torch.optim.Optimizer):
    """LARS for the linear probe: SGD with momentum whose step per weight matrix is scaled by
    trust_coefficient × ‖w‖ / ‖update‖; 1-D parameters (biases, norms) are not scaled or decayed."""

    def __init__(self, params, lr=0.0, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(update)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(param_norm > 0.0,
                                        torch.where(update_norm > 0, group["trust_coefficient"] * param_norm
                                                    / update_norm, one), one)
                    update = update * trust
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])


def fused_adamw(params, lr: float, **kw) -> tuple[torch.optim.Optimizer, str]:
    """AdamW fused (one kernel per step) where this torch supports it on the device, else foreach.
    The same update as the default AdamW, to float rounding."""
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True, **kw), "fused"
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, foreach=True, **kw), "foreach"
