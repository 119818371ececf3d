"""The frozen encoder's features: extracted once per image, split over CPU threads and sharded
under DDP, and handed from one eval of a run to the next when they read the same ones.

    eval_inputs       a uint8 batch as the encoder reads it: the eval's augmentation, then normalised
    features_of       a batch's pooled features, one sub-batch per thread (bench.train.parts.PartPool)
    extract_features  every image's features and labels, in the dataset's order (gathered under DDP)
    frozen_features   the train and test sets' features for an eval, extracted once for the linear
                      probe and k-NN when both read the same feature (bench.study.config
                      .probe_and_knn_share_features)
"""
from __future__ import annotations

import torch

from bench.core.errors import NonFiniteError
from bench.data.augment import augment, normalize
from bench.study.config import probe_and_knn_share_features
from bench.train import distributed
from bench.train.parts import PartPool


def eval_inputs(images: torch.Tensor, preset: str, img_size: int, dataset, gen,
                rows: tuple[int, slice] | None = None) -> torch.Tensor:
    """`rows` = (n, rows): `images` are a DDP rank's rows of a batch of n (augment's `share`)."""
    return normalize(augment(images, preset, img_size, gen, share=rows, cropped=dataset.crops_in_loader),
                     dataset.mean, dataset.std)


def features_of(encoder, x: torch.Tensor, pool: PartPool) -> torch.Tensor:
    """The encoder's pooled features of a batch, one sub-batch per thread of `pool`."""
    return pool.map(lambda lo, hi: encoder.features(x[lo:hi]), len(x))


@torch.no_grad()
def extract_features(encoder, dataset, img_size: int, batch_size: int, device) -> tuple:
    """Pooled, pre-head features of every image (no augmentation), with the labels. Under DDP each
    rank runs the encoder on its share of every batch and the shares are gathered: every rank
    gets every feature, in the dataset's order."""
    rank = distributed.current()
    encoder.eval()
    feats, labels = [], []
    pool = PartPool(PartPool.parts_for(device, rank.world))  # one sub-batch per CPU thread
    for k, (images, y) in enumerate(dataset.batches(batch_size, shuffle=False, seed=0, drop_last=False,
                                                    device=device, shard=(rank.rank, rank.world))):
        n = min(batch_size, len(dataset) - k * batch_size)  # the batch this share was cut from
        x = eval_inputs(images, "none", img_size, dataset, None)
        f = features_of(encoder, x, pool) if len(y) else torch.zeros(0, encoder.num_features, device=x.device)
        feats.append(distributed.gather_share(f, n, rank))
        labels.append(distributed.gather_share(y, n, rank))
    pool.close()
    feats = torch.cat(feats)
    if not torch.isfinite(feats).all():
        raise NonFiniteError(f"the encoder's features of {len(feats)} images hold NaN or infinite values")
    return feats, torch.cat(labels)


def frozen_features(name: str, cfg: dict, encoder, train_set, test_set, device,
                    shared: dict | None) -> tuple:
    """(train features, train labels, test features, test labels) of the frozen encoder for the
    eval `name`. `shared` is a run's scratch for its evals (bench.launch.job): when the linear probe
    on cached features and k-NN both read the same feature, the probe leaves what it extracted
    there and k-NN (the next eval) takes it, so they are extracted once. The same decision on every
    DDP rank (it reads the config only), so the ranks' gathers stay in step."""
    if shared is not None and "frozen_features" in shared:
        return shared.pop("frozen_features")
    img_size = cfg["data"]["img_size"]
    out = (*extract_features(encoder, train_set, img_size, 512, device),
           *extract_features(encoder, test_set, img_size, 512, device))
    if shared is not None and name == "linear_probe" and probe_and_knn_share_features(cfg["evals"]):
        shared["frozen_features"] = out
    return out
