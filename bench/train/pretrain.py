"""The one pre-training loop every method plugs into, with the recipe read from the resolved config.

The method (bench.methods) builds the model and says on which grid masks are drawn; the
target (bench.targets) says what a masked patch is scored against; everything else is here:
AdamW (β and weight decay from the config, decay on weight matrices only; fused where torch
has it) or LAMB (pretrain.optimizer; SparK's), the weight decay constant or on a cosine to
pretrain.weight_decay_end (SparK's 0.04 → 0.2), the gradient's norm clipped when the recipe
says (pretrain.clip_grad), fp32 or bf16 autocast (`pretrain.precision`; no loss scaling
needed), lr = blr × batch / 256 with linear warmup and cosine decay set every iteration,
batched augmentation and masks made on the model's device. The data order, augmentation and masks of epoch e depend only on
(seed, e), so a run's numbers do not depend on where it ran before.

On a CPU with several threads, a step's forward and backward run as one sub-batch per thread,
each on one core (`SplitStep`): the gradient is the same sum of per-sample terms, and small
tensors on one core beat the same tensors split across cores (see the README's speed table).
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from bench import masking
from bench.core.errors import NonFiniteError
from bench.data.augment import augment, normalize
from bench.data.shards import WHOLE, Shard, share
from bench.methods import create_method
from bench.targets import create_target
from bench.targets.pixels import with_loss
from bench.train import distributed
from bench.train.checkpoint import Checkpointer
from bench.train.optim import (lr_at, pretrain_optimizer, scaled_lr, set_lr, set_weight_decay, weight_decay_at,
                               weight_decay_groups)
from bench.train.openblas import use_openblas
from bench.train.parts import PartPool, batch_backward, row_draws, step_draws, use_row_drop_path


def epoch_generator(seed: int, epoch: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """The random stream of one epoch (augmentation and masks), on the device."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch * 101 + stream)


class SplitStep:
    """Forward and backward of a batch as `parts` sub-batches, one per thread of one core each,
    and, with `accum` > 1, as `accum` micro-batches one after another (gradient accumulation,
    MAE's accum_iter: the memory of one micro-batch, the update of the whole batch) —
    bench.train.parts's PartPool and batch_backward.

    Each part's loss (a mean over its masked patches, or all with loss_on_all) is weighted by its
    share of the batch's scored patches, so the parts' gradients, summed in a fixed order, are the batch's gradient
    (to float rounding): the same loss and update as one forward and backward of the batch.
    With parts=1 and accum=1 it is exactly that one forward and backward. precision "bf16" runs
    each forward under bfloat16 autocast (autocast is per thread, so each part enters its own).
    Stochastic depth reads each sample's draw from `draws` (rows × layers, bench.train.parts.row_draws).
    Under DDP, gradients are synchronised once, on the last micro-batch (`no_sync` before it).
    """

    def __init__(self, model: torch.nn.Module, parts: int, precision: str = "fp32", loss_on_all: bool = False,
                 accum: int = 1):
        self.model, self.precision, self.loss_on_all, self.accum = model, precision, loss_on_all, accum
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pool = PartPool(parts)
        self.parts = self.pool.parts

    parts_for = staticmethod(PartPool.parts_for)

    def _forward(self, x: torch.Tensor, mask: torch.Tensor, target, full_pred: bool) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss, _ = self.model(x, mask, target, full_pred=full_pred)
        return loss.float()

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, target, full_pred: bool = False,
                 draws: torch.Tensor | None = None) -> torch.Tensor:
        """Set every parameter's .grad to the gradient of the batch's loss; return the loss."""
        for p in self.params:
            p.grad = None
        n = x.shape[0]
        scored = torch.ones_like(mask) if self.loss_on_all else mask  # the patches the loss averages over
        total = scored.sum()

        def loss_of(lo: int, hi: int) -> torch.Tensor:
            with row_draws(None if draws is None else draws[lo:hi]):
                loss = self._forward(x[lo:hi], mask[lo:hi], target, full_pred)
            return loss if hi - lo == n else loss * (scored[lo:hi].sum() / total)

        return batch_backward(self.pool, self.model, n, self.accum, loss_of, self.params)

    def close(self) -> None:
        self.pool.close()


class PretrainStep:
    """One optimisation step of pre-training, as the loop runs it (and `mimbench bench speed` times it):
    set the lr, augment the batch and normalise it, draw its masks, forward and backward (split
    across CPU threads by SplitStep; this process's share of the batch under DDP), AdamW step.
    `grid` is the method's mask_grid: (h, w) for images, (T', h, w) for clips (VideoMAE)."""

    def __init__(self, cfg: dict, model: torch.nn.Module, target, optimizer, split_step: SplitStep,
                 grid: tuple[int, ...], mean, std, shard: Shard = WHOLE, batch_size: int | None = None):
        self.cfg, self.model, self.target, self.optimizer = cfg, model, target, optimizer
        self.split_step, self.grid, self.mean, self.std, self.shard = split_step, grid, mean, std, shard
        self.batch_size = batch_size  # the global batch a shard is cut from (needed when shard[1] > 1)
        self.cropped = False  # True: the loader's workers crop (an ImageFolder), the device does the rest
        self.full_pred = False  # True: the decoder predicts every patch (same loss; the speed bench's ablation)
        self.drop_layers = 0  # the model's RowDropPath layers (stochastic depth): the width of a step's draws
        # the decayed param groups (weight matrices; weight_decay_groups), by index: a resumed
        # optimizer's groups are new dicts
        self.decay_groups = [i for i, g in enumerate(optimizer.param_groups) if any(p.ndim > 1 for p in g["params"])]

    def __call__(self, images: torch.Tensor, lr: float, gen: torch.Generator,
                 weight_decay: float | None = None) -> torch.Tensor:
        """Train on one batch of uint8 images — under DDP this process's share of the global batch
        (bench.data.shards), whose crops and masks are drawn for the whole batch and sliced —;
        returns the (detached) loss of that share. The caller checks it is finite (under DDP, after
        averaging it over the ranks, so that a NaN on one rank stops every rank at the same step
        instead of leaving the others waiting)."""
        data, mcfg = self.cfg["data"], self.cfg["masking"]
        set_lr(self.optimizer, lr)
        if weight_decay is not None:  # a schedule (pretrain.weight_decay_end); None: as built
            set_weight_decay(self.optimizer, weight_decay, self.decay_groups)
        sharded = self.shard[1] > 1
        n = self.batch_size if sharded else images.shape[0]
        rows = share(n, *self.shard) if sharded else slice(None)
        x = normalize(augment(images, data["augmentation"], data["img_size"], gen, share=(n, rows) if sharded else None,
                              cropped=self.cropped), self.mean, self.std)
        frames = self.grid[0] if len(self.grid) == 3 else None  # clips: T' time steps of h×w tokens
        mask = masking.generate(mcfg["strategy"], n, self.grid[-2:], mcfg["ratio"], mcfg["params"], gen,
                                x.device, frames=frames).flatten(1)[rows]  # B×T'×L → B×(T'·L), time-major
        draws = step_draws(self.drop_layers, n, gen, x.device)  # after the masks: masks as without drop path
        # the decoder predicts only the masked patches (the loss's)
        loss = self.split_step(x, mask, self.target, full_pred=self.full_pred,
                               draws=None if draws is None else draws[rows])
        if self.cfg["pretrain"].get("clip_grad") is not None:  # BEiT 3.0, SimMIM 5.0: the global norm
            torch.nn.utils.clip_grad_norm_(self.split_step.params, self.cfg["pretrain"]["clip_grad"])
        self.optimizer.step()  # a non-finite loss is caught by the loop, on every rank at once
        return loss


def build_pretraining(cfg: dict, train_set, device: torch.device, cache_dir=None, compile: bool = False,
                      world: int = 1, rank: int = 0, openblas: tuple[str, ...] = ("linear", "attention")):
    """The method's model, its optimiser and the step that trains it, as `cfg` describes them.
    openblas: what goes on numpy's OpenBLAS where a part runs on one CPU thread, the linear layers'
    products and attention (bench.train.openblas; nothing under compile); less only to measure what
    that is worth."""
    pcfg = cfg["pretrain"]
    torch.manual_seed(cfg["seed"])
    target = with_loss(create_target(pcfg["target"], pcfg["target_params"], train_set=train_set, cfg=cfg,
                                     cache_dir=cache_dir, device=device), pcfg.get("loss"))
    method = create_method(cfg["method"])
    model = method.build_model(cfg, train_set.channels, target).to(device)
    base_lr = scaled_lr(pcfg["blr"], pcfg["batch_size"])
    optimizer = pretrain_optimizer(pcfg.get("optimizer", "adamw"), weight_decay_groups(model, pcfg["weight_decay"]),
                                   base_lr, (pcfg["beta1"], pcfg["beta2"]))
    drop_layers = use_row_drop_path(model)  # stochastic depth drawn per sample from the step's generator
    if not compile:
        use_openblas(model, openblas)
    batch_size = min(pcfg["batch_size"], len(train_set))
    if batch_size % (world * pcfg.get("accum_iter", 1)):
        raise ValueError(f"pretrain.batch_size {batch_size} does not split over {world} processes x "
                         f"pretrain.accum_iter {pcfg.get('accum_iter', 1)}")
    step_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(model)
    if compile:
        step_model = torch.compile(step_model)
    split_step = SplitStep(step_model, 1 if compile else SplitStep.parts_for(device, world), pcfg["precision"],
                           loss_on_all=pcfg.get("loss_on") == "all", accum=pcfg.get("accum_iter", 1))
    step = PretrainStep(cfg, model, target, optimizer, split_step, method.mask_grid(cfg), train_set.mean,
                        train_set.std, (rank, world), batch_size)
    step.cropped = train_set.crops_in_loader
    step.drop_layers = drop_layers
    return method, model, step


def random_init_encoder_state(cfg: dict, in_chans: int) -> dict:
    """The encoder the random-init baseline evaluates: the config's method's model as it is built
    before any training step (seeded by the run's seed), through the method's `encoder_state`."""
    torch.manual_seed(cfg["seed"])
    method = create_method(cfg["method"])
    return method.encoder_state(method.build_model(cfg, in_chans, create_target("pixel")))


def pretrain(cfg: dict, train_set, device: torch.device,
             log: Callable[[dict], None] = lambda row: None,
             checkpointer: Checkpointer | None = None,
             cache_dir=None, compile: bool = False) -> tuple[torch.nn.Module, dict]:
    """Pre-train the config's method on `train_set`; returns the model and
    {'images_per_s', 'wall_s', 'final_loss', 'gflops_per_image', 'step_parts'}.

    compile: torch.compile the forward (and keep one part per step: compiled code is not split).
    With a checkpointer: resume from its checkpoint if there is one, save one every
    `every_epochs` epochs, and on a preemption request save at the next step and hand over.
    """
    pcfg, mcfg = cfg["pretrain"], cfg["masking"]
    rank = distributed.current()
    method, model, step_fn = build_pretraining(cfg, train_set, device, cache_dir, compile, rank.world, rank.rank)
    optimizer = step_fn.optimizer
    base_lr = scaled_lr(pcfg["blr"], pcfg["batch_size"])
    batch_size = min(pcfg["batch_size"], len(train_set))
    steps_per_epoch = len(train_set) // batch_size

    # where to start: the beginning, or exactly where the checkpoint left off
    start_epoch, start_step, losses, images_seen, wall_before = 0, 0, [], 0, 0.0
    resumed = checkpointer.load() if checkpointer else None
    if resumed:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["torch_rng"])
        start_epoch, start_step = resumed["epoch"], resumed["step"]
        losses = [torch.tensor(v) for v in resumed["epoch_losses"]]
        images_seen, wall_before = resumed["images_seen"], resumed["wall_s"]

    model.train()
    start = time.perf_counter()
    loss_value, lr = math.nan, base_lr
    for epoch in range(start_epoch, pcfg["epochs"]):
        epoch_start, seen = time.perf_counter(), 0
        gen = epoch_generator(cfg["seed"], epoch, device)
        first_step = 0
        if resumed and epoch == start_epoch and start_step > 0:
            gen.set_state(resumed["generator"])
            first_step = start_step
        else:
            losses = []
        batches = train_set.batches(batch_size, shuffle=True, seed=cfg["seed"], epoch=epoch,  # this rank's
                                    drop_last=True, device=device, start=first_step, shard=(rank.rank, rank.world),
                                    augmentation=cfg["data"]["augmentation"])
        for step, (images, _) in enumerate(batches, start=first_step):
            lr = lr_at(epoch + step / steps_per_epoch, base_lr, pcfg["min_lr"], pcfg["warmup_epochs"],
                       pcfg["epochs"])
            wd = None if pcfg.get("weight_decay_end") is None else weight_decay_at(
                epoch + step / steps_per_epoch, pcfg["weight_decay"], pcfg["weight_decay_end"], pcfg["epochs"])
            loss = distributed.mean_across(step_fn(images, lr, gen, weight_decay=wd).detach(), rank)
            if not torch.isfinite(loss):  # the same value on every rank: all stop here
                raise NonFiniteError(f"pretrain loss is {loss.item()} at epoch {epoch + 1}, step {step}")
            losses.append(loss)
            seen += batch_size  # the global batch: every rank trained on its share of it
            stop = checkpointer is not None and distributed.any_across(checkpointer.stop_requested, rank, device)
            if checkpointer is not None:
                checkpointer.stop_requested = stop
            if stop and step + 1 < steps_per_epoch:
                checkpointer.save(_state(model, optimizer, epoch, step + 1, gen, losses, images_seen + seen,
                                         wall_before + time.perf_counter() - start))
                checkpointer.hand_over()
        loss_value = torch.stack(losses).mean().item()
        elapsed = time.perf_counter() - epoch_start
        images_seen += seen
        if rank.is_main:
            log({"phase": "pretrain", "epoch": epoch + 1, "loss": loss_value, "lr": lr,
                 "images_per_s": seen / elapsed, "wall_s": wall_before + time.perf_counter() - start})
        if checkpointer and (checkpointer.stop_requested or checkpointer.due(epoch + 1)):
            checkpointer.save(_state(model, optimizer, epoch + 1, 0, None, [], images_seen,
                                     wall_before + time.perf_counter() - start))
            if checkpointer.stop_requested:
                checkpointer.hand_over()
    step_fn.split_step.close()
    wall = wall_before + time.perf_counter() - start
    return model, {"images_per_s": images_seen / max(wall, 1e-9), "wall_s": wall, "final_loss": loss_value,
                   "gflops_per_image": method.flops_per_image(model, mcfg["ratio"])["total"] / 1e9,
                   "step_parts": step_fn.split_step.parts}


def _state(model, optimizer, epoch: int, step: int, gen: torch.Generator | None, losses: list,
           images_seen: int, wall_s: float) -> dict:
    """A checkpoint at the start of step `step` of epoch `epoch`."""
    return {"phase": "pretrain", "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "epoch": epoch, "step": step, "generator": gen.get_state() if gen is not None else None,
            "torch_rng": torch.get_rng_state(), "epoch_losses": [v.item() for v in losses],
            "images_seen": images_seen, "wall_s": wall_s}
