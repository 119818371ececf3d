"""Evaluations of a pre-trained encoder on the held-out split: one registry (`register_eval`).

    linear_probe  frozen encoder in eval mode (no statistic moves), BatchNorm without affine +
                  linear head, LARS (MAE section A.2). The feature — cls token or the average of
                  the patch tokens — is a config key and goes into the result. With augmentation
                  "none" the features are computed once; the batches are the same either way.
    finetune      all weights, AdamW with layer-wise lr decay, drop path, label smoothing
                  (MAE section A.3); RandAugment, random erasing and mixup / cutmix with soft
                  targets when their keys are on (bench.train.finetune_recipe). The accuracy
                  reported is the last epoch's, not the best.
                  `blocks` set: partial fine-tuning (MAE Figure 9) — only the last k blocks
                  (0.5: the MLP half of the last block, norm2 + mlp; 0: nothing) are tuned, with
                  the final norm and the head; everything else is frozen and left out of the
                  optimizer. The rest of the recipe (drop path, layer decay, lr schedule) is
                  the full fine-tuning one.
    knn           weighted k-nearest-neighbour classifier on the frozen encoder's features
                  (Wu et al. 2018, as DINO uses it): L2-normalised features, cosine similarity,
                  the k most similar training images vote with weight exp(similarity / T).

A run's evals go in that order, the frozen ones first (linear_probe, knn, finetune); when the
probe's cached features are k-NN's too (the same feature), they are extracted once and handed on
(bench.train.features.frozen_features).

Under DDP (bench.train.distributed: the process group a multi-task job set up) the evals run
on every rank together: the fine-tune trains each rank's share of every batch under
DistributedDataParallel (`batch_size` stays the global batch) and scores its share of the test
set; the probe and k-NN extract features from each rank's share and gather them, so every rank
trains the same head and predicts alike. The numbers are those of one process, to float rounding
(stochastic depth included: each sample's draw is made for the whole batch and cut with its rows,
bench.train.parts.RowDropPath).

On a CPU with several threads, one process runs each batch as one sub-batch per thread
(bench.train.parts.PartPool), as pre-training does: the fine-tune's forward and backward (the
parts' gradients summed in a fixed order) and the features the probe and k-NN extract.

Every eval works on the encoder interface a method hands out (`EvalEncoder`, built by the
method's `eval_encoder` from the pre-trained weights), so it knows no method by name: a ViT
(MAE, BEiT, SimMIM), a CNN or a video ViT plug in alike.
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable, Protocol

import torch
from torch import nn

from bench.core.errors import NonFiniteError, require_finite
from bench.core.registry import Registry
from bench.data.datasets import batch_order
from bench.data.shards import share
from bench.methods import create_method
from bench.train import distributed
from bench.train.features import eval_inputs, extract_features, features_of, frozen_features
from bench.train.finetune_recipe import FinetuneRecipe
from bench.train.optim import LARS, layer_decay_groups, lr_at, scaled_lr, set_lr
from bench.train.openblas import use_openblas
from bench.train.parts import PartPool, batch_backward, row_draws, step_draws, use_row_drop_path
from bench.train.pretrain import epoch_generator

_EVALS = Registry("eval", "evals")


def register_eval(name: str):
    """File an eval function `(cfg, encoder_state, train_set, test_set, device, log) -> dict` under
    `name`; its settings are the config's `evals.<name>` section (with `enabled`)."""
    return _EVALS.register(name)


def list_evals() -> tuple[str, ...]:
    return _EVALS.names()


def create_eval(name: str) -> Callable:
    return _EVALS.get(name)


class EvalEncoder(Protocol):
    """What a method's `eval_encoder` returns: a classifier (an nn.Module) over the pre-trained encoder."""

    head: nn.Module    # the new classification head
    num_features: int  # width of `features`
    num_layers: int    # layer ids run 0 .. num_layers

    def features(self, x: torch.Tensor) -> torch.Tensor: ...   # pooled, pre-head: B×num_features
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...   # logits
    def layer_id(self, name: str) -> int: ...                  # a parameter's depth, for layer-wise lr decay
    def freeze_for_partial_finetune(self, blocks: float | None) -> None: ...


class RawPixels(nn.Module):
    """The raw-pixels baseline's encoder: each image's (or clip's: all its `frames`) normalised
    pixels, flattened, are its features; the probe (or k-NN) reads them as it reads an encoder's."""

    num_layers = 1
    no_weight_decay_names = ()

    def __init__(self, num_classes: int, in_chans: int, img_size: int, frames: int | None = None):
        super().__init__()
        self.num_features = in_chans * (frames or 1) * img_size * img_size
        self.head = nn.Linear(self.num_features, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def layer_id(self, name: str) -> int:
        return self.num_layers

    def freeze_for_partial_finetune(self, blocks: float | None) -> None:
        return None


def build_encoder(cfg: dict, encoder_state: dict, num_classes: int, in_chans: int, feature: str,
                  drop_path: float = 0.0) -> EvalEncoder:
    """The config's method's classifier over the pre-trained (or, for the random-init baseline,
    untrained) encoder weights; the raw-pixels baseline's is `RawPixels`."""
    if cfg.get("baseline") == "raw_pixels":
        return RawPixels(num_classes, in_chans, cfg["data"]["img_size"], cfg["data"].get("frames"))
    encoder = create_method(cfg["method"]).eval_encoder(cfg, encoder_state, num_classes, in_chans, feature, drop_path)
    use_openblas(encoder)  # one CPU thread per part: linear layers and attention on OpenBLAS (bench.train.openblas)
    return encoder


def _check_batch(batch_size: int, rank: distributed.Rank, key: str) -> None:
    if batch_size < rank.world:
        raise ValueError(f"{key} is {batch_size} images here; each of the {rank.world} processes needs a share "
                         f"of every batch: expected at least {rank.world}")


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()


def _train_epoch(optimizer, batches, backward: Callable[[tuple], torch.Tensor], lr_of_step: Callable, phase: str,
                 epoch: int, rank: distributed.Rank = distributed.SINGLE) -> tuple[list, int, float]:
    """One epoch of batches (tuples of row-aligned tensors, the labels second): lr set every step,
    `backward(batch)` sets the gradients and returns the batch's loss, one optimizer step. Returns
    (losses, samples seen, last lr); a non-finite loss fails the run, naming the phase, epoch and
    step (checked once per epoch). Under DDP the losses are averaged over the ranks before the
    check, so a NaN on one rank stops every rank at the same epoch."""
    losses, seen, lr = [], 0, math.nan
    for step, batch in enumerate(batches):
        lr = lr_of_step(step)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        losses.append(backward(batch).detach())
        optimizer.step()
        seen += len(batch[1])
    if rank.world > 1:  # the whole batch's loss, the same on every rank
        losses = list(distributed.mean_across(torch.stack(losses), rank))
    require_finite(torch.stack(losses), phase, epoch + 1)
    return losses, seen, lr


def _plain_backward(loss: torch.Tensor) -> torch.Tensor:
    loss.backward()
    return loss


@register_eval("linear_probe")
def linear_probe(cfg: dict, encoder_state: dict, train_set, test_set, device,
                 log: Callable[[dict], None] = lambda row: None, _recompute_features: bool = False,
                 shared: dict | None = None) -> dict:
    """`_recompute_features` (for tests) runs the encoder on every batch even when the features
    could be cached; both paths see the same batches in the same order. `shared`: frozen_features."""
    ecfg, img_size = cfg["evals"]["linear_probe"], cfg["data"]["img_size"]
    torch.manual_seed(cfg["seed"])
    vit = build_encoder(cfg, encoder_state, train_set.num_classes, train_set.channels, ecfg["feature"]).to(device)
    vit.requires_grad_(False)
    vit.eval()  # frozen: no dropout, no statistics move
    dim = vit.num_features
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, train_set.num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    head.to(device)
    batch_size = min(ecfg["batch_size"], len(train_set))
    base_lr = scaled_lr(ecfg["blr"], batch_size)
    if ecfg["optimizer"] == "lars":
        optimizer = LARS(head.parameters(), lr=base_lr, weight_decay=ecfg["weight_decay"])
    elif ecfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(head.parameters(), lr=base_lr, momentum=0.9, weight_decay=ecfg["weight_decay"])
    else:
        optimizer = torch.optim.AdamW(head.parameters(), lr=base_lr, weight_decay=ecfg["weight_decay"])
    cached = ecfg["augmentation"] == "none" and not _recompute_features
    rank = distributed.current()  # the head trains on every rank alike, from the gathered features
    if not cached:
        _check_batch(batch_size, rank, "evals.linear_probe.batch_size")
    rows = (batch_size, share(batch_size, rank.rank, rank.world)) if rank.world > 1 else None
    gather = functools.partial(distributed.gather_share, n=batch_size, rank=rank)
    start = time.perf_counter()
    if cached:  # features computed once (the test set's too); the head trains on them
        train_feats, train_labels, test_feats, test_labels = frozen_features("linear_probe", cfg, vit, train_set,
                                                                             test_set, device, shared)
    steps_per_epoch = len(train_set) // batch_size
    criterion = nn.CrossEntropyLoss()
    for epoch in range(ecfg["epochs"]):
        head.train()
        epoch_start = time.perf_counter()
        gen = epoch_generator(cfg["seed"], epoch, device, stream=1)
        if cached:  # the order and full batches of train_set.batches(..., drop_last=True)
            order = batch_order(len(train_feats), cfg["seed"], epoch).to(device)
            batches = ((train_feats[idx], train_labels[idx]) for idx in order.split(batch_size)
                       if len(idx) == batch_size)
        else:  # under DDP each rank runs the encoder on its share; every rank's head sees the whole batch
            batches = ((gather(vit.features(eval_inputs(images, ecfg["augmentation"], img_size, train_set, gen, rows))),
                        gather(y))
                       for images, y in train_set.batches(batch_size, shuffle=True, seed=cfg["seed"], epoch=epoch,
                                                          drop_last=True, device=device, shard=(rank.rank, rank.world),
                                                          augmentation=ecfg["augmentation"]))
        losses, seen, lr = _train_epoch(
            optimizer, batches, lambda batch: _plain_backward(criterion(head(batch[0]), batch[1])),
            lambda step: lr_at(epoch + step / steps_per_epoch, base_lr, 0.0, ecfg["warmup_epochs"], ecfg["epochs"]),
            "linear_probe", epoch)
        log({"phase": "linear_probe", "epoch": epoch + 1, "loss": torch.stack(losses).mean().item(), "lr": lr,
             "images_per_s": seen / (time.perf_counter() - epoch_start), "wall_s": time.perf_counter() - start})
    head.eval()
    if not cached:
        test_feats, test_labels = extract_features(vit, test_set, img_size, 512, device)
    with torch.no_grad():
        acc = top1(head(test_feats), test_labels)
    return {"top1": acc, "feature": ecfg["feature"], "cached_features": cached,
            "wall_s": time.perf_counter() - start}


def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int,
                temperature: float, num_classes: int, chunk: int = 256) -> torch.Tensor:
    """Weighted kNN (Wu et al. 2018; DINO's eval_knn): the predicted class of every test feature.

    Features are L2-normalised, so similarity is the cosine. Each test feature's k most similar
    training features (all of them when k is larger) vote for their class with weight
    exp(similarity / temperature); the class with the largest sum wins. Test features go
    `chunk` at a time, so memory stays at chunk × len(train_feats) similarities.
    """
    train_feats = nn.functional.normalize(train_feats.float(), dim=1)
    test_feats = nn.functional.normalize(test_feats.float(), dim=1)
    k = min(k, len(train_feats))
    predictions = []
    for part in test_feats.split(chunk):
        sims, idx = (part @ train_feats.T).topk(k, dim=1)             # chunk × k, most similar first
        # exp((s - s_max) / T): the same vote up to a factor per row, and no overflow for small T
        weights = ((sims - sims[:, :1]) / temperature).exp()
        votes = torch.zeros(len(part), num_classes, device=part.device)
        votes.scatter_add_(1, train_labels[idx], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


@register_eval("knn")
def knn(cfg: dict, encoder_state: dict, train_set, test_set, device,
        log: Callable[[dict], None] = lambda row: None, shared: dict | None = None) -> dict:
    """`shared`: the probe's features when they are the same ones (frozen_features)."""
    ecfg = cfg["evals"]["knn"]
    torch.manual_seed(cfg["seed"])
    vit = build_encoder(cfg, encoder_state, train_set.num_classes, train_set.channels, ecfg["feature"]).to(device)
    vit.requires_grad_(False)
    start = time.perf_counter()
    train_feats, train_labels, test_feats, test_labels = frozen_features("knn", cfg, vit, train_set, test_set,
                                                                         device, shared)
    predicted = knn_predict(train_feats, train_labels, test_feats, ecfg["k"], ecfg["temperature"],
                            train_set.num_classes)
    acc = 100.0 * (predicted == test_labels).float().mean().item()
    return {"top1": acc, "k": ecfg["k"], "temperature": ecfg["temperature"], "feature": ecfg["feature"],
            "wall_s": time.perf_counter() - start}


@register_eval("finetune")
def finetune(cfg: dict, encoder_state: dict, train_set, test_set, device,
             log: Callable[[dict], None] = lambda row: None, return_model: bool = False,
             shared: dict | None = None):
    """The result dict; with `return_model`, (result, the fine-tuned ViT). `shared` is not read:
    fine-tuning moves the weights, so it extracts no frozen features."""
    ecfg, img_size = cfg["evals"]["finetune"], cfg["data"]["img_size"]
    rank = distributed.current()
    torch.manual_seed(cfg["seed"])
    vit = build_encoder(cfg, encoder_state, train_set.num_classes, train_set.channels, ecfg["feature"],
                        drop_path=ecfg["drop_path"])
    nn.init.trunc_normal_(vit.head.weight, std=2e-5)
    vit.freeze_for_partial_finetune(ecfg["blocks"])  # frozen blocks still see drop path (the recipe)
    trainable_params = sum(p.numel() for p in vit.parameters() if p.requires_grad)
    vit.to(device)
    batch_size = min(ecfg["batch_size"], len(train_set))
    base_lr = scaled_lr(ecfg["blr"], batch_size)
    optimizer = torch.optim.AdamW(layer_decay_groups(vit, ecfg["weight_decay"], ecfg["layer_decay"]), lr=base_lr)
    recipe = FinetuneRecipe(ecfg, train_set, img_size, cfg["seed"])  # RandAugment, erasing, mixup/cutmix
    criterion = recipe.criterion()
    drop_layers = use_row_drop_path(vit)  # stochastic depth drawn per sample, for the whole batch
    model, shard, rows, of_batch, weight = vit, (0, 1), None, None, 1.0
    if rank.world > 1:  # each rank trains its share of every batch; DDP averages the gradients
        _check_batch(batch_size, rank, "evals.finetune.batch_size")
        model, shard = nn.parallel.DistributedDataParallel(vit), (rank.rank, rank.world)
        rows = share(batch_size, rank.rank, rank.world)
        of_batch = (batch_size, rows)  # augment's `share`: the draws of the whole batch, this rank's rows
        weight = len(range(batch_size)[rows]) * rank.world / batch_size  # unequal shares: still the batch's mean
    pool = PartPool(PartPool.parts_for(device, rank.world))  # one sub-batch per CPU thread
    backward = finetune_backward(vit, model, criterion, pool, ecfg.get("accum_iter", 1), weight)
    steps_per_epoch = len(train_set) // batch_size
    start = time.perf_counter()
    for epoch in range(ecfg["epochs"]):
        vit.train()
        epoch_start = time.perf_counter()
        gen = epoch_generator(cfg["seed"], epoch, device, stream=2)
        if recipe.active:  # the whole batch's augmentation and mixing, before any micro-batches
            # its draws run through the batch (and mixup pairs rows across it): under DDP every rank
            # prepares the whole batch and trains on its rows
            loader = train_set.batches(batch_size, shuffle=True, seed=cfg["seed"] + 1, epoch=epoch, drop_last=True,
                                       device=device, augmentation=ecfg["augmentation"])
            batches = (_rows((*recipe(images, y, gen, epoch, step), step_draws(drop_layers, batch_size, gen, device)),
                             rows) for step, (images, y) in enumerate(loader))
        else:
            loader = train_set.batches(batch_size, shuffle=True, seed=cfg["seed"] + 1, epoch=epoch, drop_last=True,
                                       device=device, shard=shard, augmentation=ecfg["augmentation"])
            batches = ((eval_inputs(images, ecfg["augmentation"], img_size, train_set, gen, of_batch), y,
                        _rows(step_draws(drop_layers, batch_size, gen, device), rows)) for images, y in loader)
        losses, seen, lr = _train_epoch(
            optimizer, batches, backward,
            lambda step: lr_at(epoch + step / steps_per_epoch, base_lr, ecfg["min_lr"], ecfg["warmup_epochs"],
                               ecfg["epochs"]), "finetune", epoch, rank=rank)
        seen = seen if rank.world == 1 else len(losses) * batch_size  # every rank trained its share
        log({"phase": "finetune", "epoch": epoch + 1, "loss": torch.stack(losses).mean().item(), "lr": lr,
             "images_per_s": seen / (time.perf_counter() - epoch_start), "wall_s": time.perf_counter() - start})
    vit.eval()
    correct, total = 0.0, 0
    finite = torch.tensor(True, device=device)
    with torch.no_grad():  # under DDP each rank scores its share of every batch
        for images, y in test_set.batches(512, shuffle=False, seed=0, drop_last=False, device=device, shard=shard):
            if not len(y):  # a share of a last batch smaller than the world
                continue
            x = eval_inputs(images, "none", img_size, test_set, None)
            logits = pool.map(lambda lo, hi: vit(x[lo:hi]), len(x))
            finite &= torch.isfinite(logits).all()
            correct += top1(logits, y) * len(y) / 100.0
            total += len(y)
    pool.close()
    if rank.world > 1:
        counts = distributed.sum_across(torch.tensor([correct, total, float(not finite)], dtype=torch.float64,
                                                     device=device), rank)
        correct, total, finite = counts[0].item(), round(counts[1].item()), counts[2].item() == 0
    if not finite:
        raise NonFiniteError(f"finetune: the fine-tuned model's logits on the test set are not finite "
                             f"(after epoch {ecfg['epochs']})")
    result = {"top1": 100.0 * correct / total, "feature": ecfg["feature"], "blocks": ecfg["blocks"],
              "trainable_params": trainable_params, "wall_s": time.perf_counter() - start}
    return (result, vit) if return_model else result


def finetune_backward(vit: nn.Module, model: nn.Module, criterion, pool: PartPool, accum: int = 1,
                      weight: float = 1.0) -> Callable[[tuple], torch.Tensor]:
    """backward(batch) for a fine-tuning batch (inputs, targets, stochastic-depth draws or None): every
    trainable weight's .grad set to the gradient of the batch's mean loss, computed as `accum`
    micro-batches each split over `pool`'s threads; returns the loss. `model` is `vit` or its DDP
    wrapper; `weight` turns a DDP rank's mean into its share of the batch's."""
    params = [p for p in vit.parameters() if p.requires_grad]

    def backward(batch: tuple) -> torch.Tensor:
        x, y, draws = batch
        n = len(y)

        def loss_of(lo: int, hi: int) -> torch.Tensor:
            with row_draws(None if draws is None else draws[lo:hi]):
                loss = criterion(model(x[lo:hi]), y[lo:hi])
            return loss if hi - lo == n and weight == 1.0 else loss * (weight * (hi - lo) / n)

        return batch_backward(pool, model, n, accum, loss_of, params)

    return backward


def _rows(batch, rows: slice | None):
    """A DDP rank's rows of a prepared batch (a tensor, or a tuple of them and Nones); the whole
    batch for one process."""
    if rows is None or batch is None:
        return batch
    if isinstance(batch, tuple):
        return tuple(_rows(t, rows) for t in batch)
    return batch[rows]
