"""MAE pre-training: the paper's recipe, read from the resolved config.

AdamW (β = 0.9, 0.95, weight decay 0.05 on weight matrices), lr = blr × batch / 256 with
linear warmup and cosine decay set every iteration, batched augmentation and masks made on
the model's device. The data order, augmentation and masks of epoch e depend only on
(seed, e), so a run's numbers do not depend on where it ran before.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from bench import masking
from bench.augment import augment, normalize
from bench.models_mae import MaskedAutoencoderViT, build_mae
from bench.optim import lr_at, scaled_lr, set_lr, weight_decay_groups
from bench.targets import build_target


def epoch_generator(seed: int, epoch: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """The random stream of one epoch (augmentation and masks), on the device."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def pretrain(cfg: dict, train_set, device: torch.device,
             log: Callable[[dict], None] = lambda row: None) -> tuple[MaskedAutoencoderViT, dict]:
    """Pre-train an MAE on `train_set`; returns the model and {'images_per_s', 'wall_s', 'final_loss'}."""
    pcfg, mcfg, data = cfg["pretrain"], cfg["masking"], cfg["data"]
    torch.manual_seed(cfg["seed"])
    target = build_target(pcfg["target"])
    patch_dim = cfg["model"]["patch_size"] ** 2 * train_set.channels
    model = build_mae(cfg["model"], data["img_size"], train_set.channels, target.out_dim(patch_dim)).to(device)
    base_lr = scaled_lr(pcfg["blr"], pcfg["batch_size"])
    optimizer = torch.optim.AdamW(weight_decay_groups(model, pcfg["weight_decay"]), lr=base_lr,
                                  betas=(pcfg["beta1"], pcfg["beta2"]))
    batch_size = min(pcfg["batch_size"], len(train_set))
    steps_per_epoch = len(train_set) // batch_size
    grid = (model.grid, model.grid)

    model.train()
    start = time.perf_counter()
    images_seen, loss_value = 0, math.nan
    for epoch in range(pcfg["epochs"]):
        epoch_start, losses, seen = time.perf_counter(), [], 0
        gen = epoch_generator(cfg["seed"], epoch, device)
        batches = train_set.batches(batch_size, shuffle=True, seed=cfg["seed"], epoch=epoch,
                                    drop_last=True, device=device)
        for step, (images, _) in enumerate(batches):
            lr = lr_at(epoch + step / steps_per_epoch, base_lr, pcfg["min_lr"], pcfg["warmup_epochs"],
                       pcfg["epochs"])
            set_lr(optimizer, lr)
            x = normalize(augment(images, data["augmentation"], data["img_size"], gen),
                          train_set.mean, train_set.std)
            mask = masking.generate(mcfg["strategy"], x.shape[0], grid, mcfg["ratio"], mcfg["params"], gen, device)
            loss, _ = model(x, mask, target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pre-training loss is {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            seen += x.shape[0]
        loss_value = torch.stack(losses).mean().item()
        elapsed = time.perf_counter() - epoch_start
        images_seen += seen
        log({"phase": "pretrain", "epoch": epoch + 1, "loss": loss_value, "lr": lr,
             "images_per_s": seen / elapsed, "wall_s": time.perf_counter() - start})
    wall = time.perf_counter() - start
    return model, {"images_per_s": images_seen / wall, "wall_s": wall, "final_loss": loss_value}
