"""The evals' step kinds for `mimbench bench speed`: the encoder the evals build, timed per step.

    encoder_forward               the features the linear probe caches: all patches, no grad, eval mode,
                                  one sub-batch per CPU thread (bench.train.features.features_of)
    linear_probe_step_cached      one probe step (BatchNorm without affine + linear head, LARS) on
                                  features computed once (augmentation none)
    linear_probe_step_recomputed  the same step with features recomputed from augmented images
    finetune_step                 one fine-tuning step as the eval takes it (bench.train.evals.finetune_backward):
                                  drop path drawn per sample, layer-wise lr decay, label smoothing,
                                  crop_rand, one sub-batch per CPU thread

The encoder is the config's method's (bench.train.evals.build_encoder) and its `features(x)` is
what the probe reads; the cached features come from bench.train.features.extract_features.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.benchmarks.timing import Cycle, Kind
from bench.data.augment import augment, normalize
from bench.data.datasets import ImageSet
from bench.train.evals import build_encoder, extract_features, features_of, finetune_backward
from bench.train.optim import LARS, layer_decay_groups, scaled_lr
from bench.train.parts import PartPool, step_draws, use_row_drop_path


def eval_kinds(cfg: dict, train_set: ImageSet, batch: int, device: torch.device, encoder_state: dict) -> list[Kind]:
    """encoder_forward, linear_probe_step_cached / _recomputed, finetune_step on `train_set`'s images."""
    img_size, channels, classes = cfg["data"]["img_size"], train_set.channels, train_set.num_classes
    mean, std = train_set.mean, train_set.std
    gen = torch.Generator(device=device).manual_seed(1)
    kinds = []

    def inputs(images: torch.Tensor, preset: str) -> torch.Tensor:
        return normalize(augment(images, preset, img_size, gen if preset != "none" else None), mean, std)

    # encoder_forward: the features the probe caches (all patches, no grad, eval mode)
    encoder = build_encoder(cfg, encoder_state, classes, channels, "cls").to(device)
    encoder.requires_grad_(False)
    encoder.eval()
    plain_batches = Cycle(lambda epoch: train_set.batches(batch, shuffle=False, drop_last=True, device=device))
    pool = PartPool(PartPool.parts_for(device, 1))  # as the evals split a batch on the CPU

    @torch.no_grad()
    def encoder_step():
        images, _ = plain_batches.next()
        features_of(encoder, inputs(images, "none"), pool)

    kinds.append(Kind("encoder_forward", encoder_step, batch, device))
    kinds[-1].info = {"step_parts": pool.parts}

    # linear probe: BatchNorm (no affine) + linear head, LARS, on cached or recomputed features
    head = nn.Sequential(nn.BatchNorm1d(encoder.num_features, affine=False, eps=1e-6),
                         nn.Linear(encoder.num_features, classes)).to(device)
    optimizer = LARS(head.parameters(), lr=scaled_lr(0.1, batch))
    criterion = nn.CrossEntropyLoss()
    n_cached = min(len(train_set), 8 * batch)  # the head cycles over these; more would only cost set-up time
    some = ImageSet(train_set.name, train_set.images[:n_cached], train_set.labels[:n_cached], classes)
    some.mean, some.std = mean, std
    cached, cached_labels = extract_features(encoder, some, img_size, 512, device)

    def head_step(feats, y):
        loss = criterion(head(feats), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def cached_batches(epoch):
        order = torch.randperm(len(cached), generator=torch.Generator().manual_seed(epoch)).to(device)
        return ((cached[idx], cached_labels[idx]) for idx in order.split(batch) if len(idx) == batch)

    cached_cycle = Cycle(cached_batches)
    kinds.append(Kind("linear_probe_step_cached", lambda: head_step(*cached_cycle.next()), batch, device))
    aug_batches = Cycle(lambda epoch: train_set.batches(batch, shuffle=True, seed=0, epoch=epoch, drop_last=True,
                                                        device=device))

    def recomputed_step():
        images, y = aug_batches.next()
        head_step(encoder.features(inputs(images, "crop_rand")), y)

    kinds.append(Kind("linear_probe_step_recomputed", recomputed_step, batch, device))

    # fine-tuning: all weights, AdamW with layer-wise lr decay, drop path, label smoothing
    ecfg = cfg["evals"]["finetune"]
    ft = build_encoder(cfg, encoder_state, classes, channels, ecfg["feature"], drop_path=ecfg["drop_path"]).to(device)
    ft.train()
    drop_layers = use_row_drop_path(ft)
    ft_opt = torch.optim.AdamW(layer_decay_groups(ft, ecfg["weight_decay"], ecfg["layer_decay"]),
                               lr=scaled_lr(ecfg["blr"], batch))
    backward = finetune_backward(ft, ft, nn.CrossEntropyLoss(label_smoothing=ecfg["label_smoothing"]), pool)
    ft_batches = Cycle(lambda epoch: train_set.batches(batch, shuffle=True, seed=1, epoch=epoch, drop_last=True,
                                                       device=device))

    def finetune_step():
        images, y = ft_batches.next()
        ft_opt.zero_grad(set_to_none=True)
        backward((inputs(images, "crop_rand"), y, step_draws(drop_layers, len(y), gen, device)))
        ft_opt.step()

    kinds.append(Kind("finetune_step", finetune_step, batch, device))
    kinds[-1].info = {"step_parts": pool.parts, "drop_path": ecfg["drop_path"]}
    kinds[-1].close = pool.close
    return kinds
