"""Dataset loaders, one per dataset registered in bench.data, reading files already on the
machine — nothing is downloaded.

Small datasets are held in memory as uint8 N×C×H×W tensors and copied once to the device the
model runs on; batches are cut from them there, in an order that depends only on
(seed, epoch). Augmentation happens later, batched on the device (bench.data.augment).
ImageFolder trees are too big for memory: they stream (bench.data.streaming) through a torch DataLoader whose
workers (as many as the CPUs the run was given, `loader_workers`) decode and resize to a fixed
square, in the same deterministic order; both splits use train/'s class-to-index mapping. An image
that cannot be read there fails the run with one line naming it (a ConfigError raised in the main
process), not a worker's traceback.

A limit (data.train_limit, data.test_limit) draws the seeded, class-stratified subset of
bench.data.subset, for every dataset; one larger than its split is an error.
"""
from __future__ import annotations

import functools
import gzip
import pickle
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from bench.core import registry
from bench.core.errors import ConfigError
from bench.data import dataset_entry, find_root
from bench.data.shards import WHOLE, Shard, share
from bench.data.files import SYNTHETIC_SIZES, class_folders, idx_file, imagefolder_split, limit_error
from bench.data.subset import stratified_subset

if TYPE_CHECKING:
    from bench.data.streaming import ImageFolderSet


def batch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a function of (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
    return torch.randperm(n, generator=gen)


class ImageSet:
    """An in-memory labelled image set: uint8 images N×C×H×W (or clips N×C×T×H×W) and int64 labels.
    Its batches are whole images: the crop happens on the device (bench.data.augment)."""

    crops_in_loader = False

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        self.name, self.images, self.labels, self.num_classes = name, images, labels, num_classes
        self.mean, self.std = dataset_entry(name).stats
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    @property
    def frames(self) -> int | None:
        """T of clips N×C×T×H×W; None for images."""
        return self.images.shape[2] if self.images.dim() == 5 else None

    def __len__(self) -> int:
        return self.images.shape[0]

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels on `device`, copied there once."""
        key = str(torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = (self.images.to(device), self.labels.to(device))
        return self._on_device[key]

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, device="cpu", start: int = 0, shard: Shard = WHOLE,
                augmentation: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of (uint8 images, labels) on `device`, from batch number `start` on; with
        `shard` (rank, world), this rank's share of each (bench.data.shards). `augmentation` is
        not used here: whole images, cropped on the device."""
        images, labels = self.on(device)
        n = len(self)
        order = batch_order(n, seed, epoch).to(images.device) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(start * batch_size, stop, batch_size):
            rows = share(min(batch_size, n - start), *shard)
            if order is None:
                yield images[start:start + batch_size][rows], labels[start:start + batch_size][rows]
            else:
                idx = order[start:start + batch_size][rows]
                yield images[idx], labels[idx]


# ----------------------------------------------------------------------------- reading files
# (finding them, and the cheap checks `mimbench plan` makes, are in bench.data: no torch there)
def _read_idx(path: Path, name: str = "data") -> np.ndarray:
    """An unsigned-byte IDX file (gzipped or not) as an array; a one-line ConfigError naming the
    file when it is not one, or holds fewer or more bytes than its header declares."""
    expected = "expected an unsigned-byte IDX file"
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError(name, f"cannot be read ({' '.join(str(err).split()) or type(err).__name__}); {expected}",
                          str(path)) from None
    if len(raw) < 4:
        raise ConfigError(name, f"holds {len(raw)} bytes; {expected}", str(path))
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or len(raw) < 4 + 4 * ndim:
        raise ConfigError(name, f"not an unsigned-byte IDX file (header {raw[:4].hex()}); {expected}", str(path))
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(raw) != 4 + 4 * ndim + size:
        raise ConfigError(name, f"holds {len(raw) - 4 - 4 * ndim} bytes of data, not the {size} its header declares "
                                f"({'x'.join(map(str, shape))}): truncated or corrupt; {expected}", str(path))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_idx_file = idx_file


def in_memory(name: str, images: np.ndarray, labels: np.ndarray, classes: int, limit: int | None,
              split: str = "train", where: str | Path = "the generated set") -> ImageSet:
    """`images`/`labels` of the split `split` as an in-memory ImageSet: all of them, or the
    seeded, class-stratified subset of `limit` (bench.data.subset); a limit larger than the split
    is a one-line ConfigError naming `where` (the split's file)."""
    if limit is not None:
        if limit > len(labels):
            raise limit_error(name, "train" if split == "train" else "test", limit, len(labels), where)
        keep = stratified_subset(labels, limit, classes, split)
        images, labels = images[keep], np.asarray(labels)[keep]
    return ImageSet(name, torch.from_numpy(np.array(images, dtype=np.uint8)),
                    torch.from_numpy(np.asarray(labels, dtype=np.int64)), classes)


# ----------------------------------------------------------------------------- the loaders
# Each is registered in bench.data and called as (name, split, data_root, limit=, load_size=),
# `split` being the name on disk ('train', or the entry's test_split).
def load_fashion_mnist(name: str, split: str, data_root: str | None, *, limit: int | None,
                       load_size: int) -> ImageSet:
    prefix = "train" if split == "train" else "t10k"
    folder = find_root(name, data_root, f"{prefix}-images-idx3-ubyte")
    images_path, labels_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte"), _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = _read_idx(images_path, name), _read_idx(labels_path, name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ConfigError(name, f"holds labels of shape {labels.shape} for images of shape {images.shape} in "
                                f"{images_path.name}; expected N labels for N x H x W images", str(labels_path))
    if labels.size and labels.max() >= 10:
        raise ConfigError(name, f"holds label {labels.max()}; expected labels 0..9", str(labels_path))
    return in_memory(name, images[:, None], labels, 10, limit, split, images_path)


def _read_cifar(name: str, files: list[str], label_key: bytes, classes: int, data_root: str | None,
                limit: int | None, split: str) -> ImageSet:
    folder = find_root(name, data_root, files[0])
    images, labels = [], []
    for file in files:
        path = folder / file
        expected = f"expected a python pickle of {{b'data': N x 3072 bytes, {label_key!r}: N labels 0..{classes - 1}}}"
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
        except Exception as err:  # a truncated or foreign pickle raises any of a dozen kinds
            raise ConfigError(name, f"cannot be unpickled ({type(err).__name__}: {' '.join(str(err).split())}); "
                                    f"{expected}", str(path)) from None
        if not isinstance(entry, dict) or b"data" not in entry or label_key not in entry:
            keys = sorted(map(repr, entry))[:4] if isinstance(entry, dict) else type(entry).__name__
            raise ConfigError(name, f"holds {keys}; {expected}", str(path))
        try:
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            file_labels = np.asarray(entry[label_key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise ConfigError(name, f"holds data that does not read as images ({' '.join(str(err).split())}); "
                                    f"{expected}", str(path)) from None
        if len(data) != len(file_labels) or (file_labels.size and not 0 <= file_labels.min() <= file_labels.max()
                                             < classes):
            raise ConfigError(name, f"holds {len(data)} images and {len(file_labels)} labels "
                                    f"(from {file_labels.min() if file_labels.size else '-'} to "
                                    f"{file_labels.max() if file_labels.size else '-'}); {expected}", str(path))
        images.append(data)
        labels.extend(file_labels.tolist())
    return in_memory(name, np.concatenate(images), np.asarray(labels), classes, limit, split,
                     folder / files[0] if len(files) == 1 else folder)


def load_cifar10(name: str, split: str, data_root: str | None, *, limit: int | None, load_size: int) -> ImageSet:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return _read_cifar(name, files, b"labels", 10, data_root, limit, split)


def load_cifar100(name: str, split: str, data_root: str | None, *, limit: int | None, load_size: int) -> ImageSet:
    files = ["train"] if split == "train" else ["test"]
    return _read_cifar(name, files, b"fine_labels", 100, data_root, limit, split)


def load_imagefolder(name: str, split: str, data_root: str | None, *, limit: int | None, load_size: int):
    from bench.data.streaming import ImageFolderSet

    folder = imagefolder_split(name, data_root, split)
    classes = class_folders(imagefolder_split(name, data_root, "train"))  # one label space: train/'s
    return ImageFolderSet(folder, split, load_size, limit, classes=classes)


def load_synthetic(name: str, split: str, data_root: str | None, *, limit: int | None, load_size: int) -> ImageSet:
    return in_memory(name, *make_synthetic(split), limit, split)


def make_synthetic(split: str, n: int | None = None, size: int = 32) -> tuple[np.ndarray, np.ndarray, int]:
    """Ten classes of colored sine gratings; the class sets the orientation. Deterministic."""
    n = n or SYNTHETIC_SIZES["train" if split == "train" else "test"]
    gen = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.arange(n) % 10
    labels = labels[torch.randperm(n, generator=gen)]
    angle = labels * (torch.pi / 10) + 0.08 * torch.randn(n, generator=gen)
    freq = 2 * torch.pi * (0.12 + 0.06 * torch.rand(n, generator=gen))
    phase = 2 * torch.pi * torch.rand(n, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    proj = xs * torch.cos(angle)[:, None, None] + ys * torch.sin(angle)[:, None, None]
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])            # N×H×W
    color = 0.3 + 0.7 * torch.rand(n, 3, 1, 1, generator=gen)
    images = 0.5 + 0.4 * color * wave[:, None] + 0.08 * torch.randn(n, 3, size, size, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), labels.numpy(), 10


@functools.lru_cache(maxsize=8)
def load_cached(name: str, split: str, data_root: str | None, limit: int | None,
                load_size: int, identity: str | None = None, frames: int | None = None,
                frame_stride: int = 1) -> ImageSet | ImageFolderSet:
    """The registered loader's data set, loaded once per argument set (bench.data.create_dataset);
    `identity` (the data's digest) only keys the cache: files that changed are read again. A video
    dataset's loader is also given `frames` and `frame_stride` (bench.data.video)."""
    entry = dataset_entry(name)
    video = {"frames": frames, "frame_stride": frame_stride} if entry.video else {}
    return registry.load(entry.load)(name, split, data_root, limit=limit, load_size=load_size, **video)
