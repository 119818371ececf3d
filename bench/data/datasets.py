"""Datasets, read from files already on the machine — nothing is downloaded.

    fashion_mnist  the IDX files (gzipped or not), e.g. Debian's `dataset-fashion-mnist`
    cifar10        the python-pickle folder `cifar-10-batches-py`
    cifar100       the python-pickle folder `cifar-100-python`
    imagefolder    an ImageNet-style tree: <root>/train/<class>/*.JPEG and <root>/val/<class>/...
    synthetic      10 classes of oriented gratings, generated in memory (for tests)

Small datasets are held in memory as uint8 N×C×H×W tensors and copied once to the device the
model runs on; batches are cut from them there, in an order that depends only on
(seed, epoch). Augmentation happens later, batched on the device (bench.data.augment).
ImageFolder trees are too big for memory: they stream through a torch DataLoader whose
workers decode and resize to a fixed square, in the same deterministic order.
"""
from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench.core.errors import ConfigError

# Where each dataset is looked for, under each search root (see `find_root`).
FOLDER_NAMES = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
    "imagefolder": ("imagenet",),
}
HOW_TO_GET = {
    "fashion_mnist": "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
                     "or put the four *-idx?-ubyte[.gz] files in a folder and pass --data-root",
    "cifar10": "unpack cifar-10-python.tar.gz and pass its folder with --data-root",
    "cifar100": "unpack cifar-100-python.tar.gz and pass its folder with --data-root",
    "imagefolder": "pass the folder holding train/ and val/ with --data-root",
}
DEBIAN_DATASETS = Path("/usr/share/datasets")

# Per-channel mean and std of the training images, in [0, 1].
STATS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def batch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of epoch `epoch`: a function of (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
    return torch.randperm(n, generator=gen)


class ImageSet:
    """An in-memory labelled image set: uint8 images N×C×H×W and int64 labels."""

    def __init__(self, name: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int):
        self.name, self.images, self.labels, self.num_classes = name, images, labels, num_classes
        self.mean, self.std = STATS[name]
        self._on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels on `device`, copied there once."""
        key = str(torch.device(device))
        if key not in self._on_device:
            self._on_device[key] = (self.images.to(device), self.labels.to(device))
        return self._on_device[key]

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, device="cpu", start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of (uint8 images, labels) on `device`, from batch number `start` on."""
        images, labels = self.on(device)
        n = len(self)
        order = batch_order(n, seed, epoch).to(images.device) if shuffle else None
        stop = n - n % batch_size if drop_last else n
        for start in range(start * batch_size, stop, batch_size):
            if order is None:
                yield images[start:start + batch_size], labels[start:start + batch_size]
            else:
                idx = order[start:start + batch_size]
                yield images[idx], labels[idx]


class ImageFolderSet:
    """An ImageNet-style tree, streamed: workers decode and resize to `load_size`² uint8."""

    def __init__(self, root: Path, split: str, load_size: int, limit: int | None, workers: int = 8):
        import torchvision
        from torchvision.transforms import v2

        transform = v2.Compose([v2.PILToTensor(), v2.Resize(load_size, antialias=True), v2.CenterCrop(load_size)])
        self.folder = torchvision.datasets.ImageFolder(str(root), transform=transform)
        self.name, self.load_size, self.workers = "imagefolder", load_size, workers
        self.num_classes = len(self.folder.classes)
        self.mean, self.std = STATS["imagefolder"]
        self.length = min(limit, len(self.folder)) if limit else len(self.folder)
        self.labels = torch.tensor(self.folder.targets[:self.length])

    channels = 3

    @property
    def size(self) -> int:
        return self.load_size

    def __len__(self) -> int:
        return self.length

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, device="cpu", start: int = 0):
        order = batch_order(self.length, seed, epoch).tolist() if shuffle else list(range(self.length))
        order = order[start * batch_size:]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.folder, order), batch_size=batch_size, shuffle=False,
            num_workers=self.workers, drop_last=drop_last, pin_memory=torch.device(device).type == "cuda",
            persistent_workers=False)
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


# ----------------------------------------------------------------------------- finding files
def search_roots(data_root: str | None) -> list[Path]:
    """Where data is looked for, first match wins: --data-root, $MIMBENCH_DATA, Debian's folder."""
    roots = [Path(data_root)] if data_root else []
    if os.environ.get("MIMBENCH_DATA"):
        roots.append(Path(os.environ["MIMBENCH_DATA"]))
    roots.append(DEBIAN_DATASETS)
    return roots


def find_root(name: str, data_root: str | None, marker: str) -> Path:
    """The first folder that holds `marker`: each search root itself, then its standard sub-folders."""
    tried = []
    for root in search_roots(data_root):
        for folder in [root] + [root / sub for sub in FOLDER_NAMES[name]]:
            tried.append(str(folder))
            if (folder / marker).exists() or (folder / (marker + ".gz")).exists():
                return folder
    raise ConfigError("data.name", f"{name} not found (looked for {marker} in {', '.join(tried)}); "
                                   f"{HOW_TO_GET[name]}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path:
    plain = folder / stem
    return plain if plain.exists() else folder / (stem + ".gz")


def load_fashion_mnist(split: str, data_root: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    prefix = "train" if split == "train" else "t10k"
    folder = find_root("fashion_mnist", data_root, f"{prefix}-images-idx3-ubyte")
    images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))[:, None]
    labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    return images, labels, 10


def load_cifar(name: str, split: str, data_root: str | None) -> tuple[np.ndarray, np.ndarray, int]:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, classes = b"labels", 10
    else:
        files, label_key, classes = (["train"] if split == "train" else ["test"]), b"fine_labels", 100
    folder = find_root(name, data_root, files[0])
    images, labels = [], []
    for file in files:
        with open(folder / file, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        images.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[label_key])
    return np.concatenate(images), np.asarray(labels), classes


def make_synthetic(split: str, n: int | None = None, size: int = 32) -> tuple[np.ndarray, np.ndarray, int]:
    """Ten classes of colored sine gratings; the class sets the orientation. Deterministic."""
    n = n or (5000 if split == "train" else 1000)
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
def _load_cached(name: str, split: str, data_root: str | None, limit: int | None,
                 load_size: int) -> ImageSet | ImageFolderSet:
    if name == "imagefolder":
        roots = search_roots(data_root)
        folder = next((r / sub / split for r in roots for sub in ("", *FOLDER_NAMES[name])
                       if (r / sub / split).is_dir()), None)
        if folder is None:
            raise ConfigError("data.name", f"imagefolder: no {split}/ folder under "
                                           f"{', '.join(map(str, roots))}; {HOW_TO_GET[name]}")
        return ImageFolderSet(folder, split, load_size, limit)
    if name == "fashion_mnist":
        images, labels, classes = load_fashion_mnist(split, data_root)
    elif name in ("cifar10", "cifar100"):
        images, labels, classes = load_cifar(name, split, data_root)
    elif name == "synthetic":
        images, labels, classes = make_synthetic(split)
    else:
        raise ConfigError("data.name", f"{name!r} is not allowed; allowed: one of {', '.join(DATASETS)}")
    if limit:
        images, labels = images[:limit], labels[:limit]
    return ImageSet(name, torch.from_numpy(np.array(images, dtype=np.uint8)),
                    torch.from_numpy(np.asarray(labels, dtype=np.int64)), classes)


def load_dataset(data_cfg: dict, split: str, data_root: str | None = None) -> ImageSet | ImageFolderSet:
    """The `split` ('train' or 'test') of the dataset in the run config's `data` section."""
    limit = data_cfg.get("train_limit") if split == "train" else data_cfg.get("test_limit")
    split_name = split if data_cfg["name"] != "imagefolder" else ("train" if split == "train" else "val")
    load_size = round(data_cfg["img_size"] * 8 / 7)  # ImageNet's 256 for 224 px crops
    return _load_cached(data_cfg["name"], split_name, data_root, limit, load_size)


DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
