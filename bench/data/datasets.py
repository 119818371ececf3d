"""Dataset loaders, one per dataset registered in bench.data, reading files already on the
machine — nothing is downloaded.

Small datasets are held in memory as uint8 N×C×H×W tensors and copied once to the device the
model runs on; batches are cut from them there, in an order that depends only on
(seed, epoch). Augmentation happens later, batched on the device (bench.data.augment).
ImageFolder trees are too big for memory: they stream through a torch DataLoader whose
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
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from bench.core import registry
from bench.core.errors import ConfigError
from bench.data import dataset_entry, find_root
from bench.data.shards import WHOLE, Shard, share, step_rows
from bench.data.files import (IMAGE_MODES, SYNTHETIC_SIZES, class_folders, idx_file, imagefolder_split, limit_error,
                              list_split)
from bench.data.subset import stratified_subset


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


def load_image(path: str):
    """An image as 8-bit RGB (torchvision's default loader), or a one-line ConfigError naming the
    file when it does not open or is not 8-bit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            mode = img.mode
            if mode in IMAGE_MODES:
                return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ConfigError("imagefolder", f"is not a readable image ({' '.join(str(err).split()) or type(err).__name__}"
                                         f"); expected a JPEG, PNG or other image", path) from None
    raise ConfigError("imagefolder", f"has image mode {mode}; expected an 8-bit image, one of {', '.join(IMAGE_MODES)}",
                      path)


def loader_workers(cpus: int | None = None, threads: int | None = None) -> int:
    """DataLoader workers for a run: the CPUs it was given (its affinity mask), no more than its
    torch threads (the launch's `threads`, which run_one sets), and 0 — reading in the main
    process — when that leaves one CPU."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    threads = torch.get_num_threads() if threads is None else threads
    n = max(1, min(cpus, threads))
    return 0 if n == 1 else n


class Unreadable:
    """What a worker hands back instead of a batch holding a file it could not read: the one-line
    error, raised again in the main process (torch would wrap it in a worker's traceback)."""

    def __init__(self, key: str, detail: str, source: str | None):
        self.key, self.detail, self.source = key, detail, source

    def error(self) -> ConfigError:
        return ConfigError(self.key, self.detail, self.source)


class _FolderImages(torch.utils.data.Dataset):
    """(path, label) samples, decoded and resized by `transform`; a file that fails is an Unreadable."""

    def __init__(self, samples: list[tuple[str, int]], transforms: dict):
        self.samples, self.transforms = samples, transforms

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, str, int]):
        """item: (sample index, transform name, the seed of its random draws)."""
        index, kind, key = item
        path, label = self.samples[index]
        try:
            image = load_image(path)
            with torch.random.fork_rng(devices=[]):  # the sample's draws, wherever it is decoded; the
                torch.manual_seed(key)                # process's own stream (drop path) left as it was
                return self.transforms[kind](image), label
        except ConfigError as err:
            return Unreadable(err.key, err.detail, err.source)
        except Exception as err:  # decoding or resizing failed half-way: the file is still what to name
            return Unreadable("imagefolder", f"cannot be decoded ({type(err).__name__}: "
                                             f"{' '.join(str(err).split())}); expected a JPEG, PNG or other image", path)


class _Steps:
    """A DataLoader's batch sampler whose steps (lists of sample indices) are set before each pass,
    so one loader, and its persistent workers, serve every epoch."""

    def __init__(self):
        self.steps: list[list] = []

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def _collate(items: list):
    bad = next((item for item in items if isinstance(item, Unreadable)), None)
    return bad if bad is not None else torch.utils.data.default_collate(items)


class ImageFolderSet:
    """An ImageNet-style tree, streamed: workers decode each image and crop it as the official
    code's transforms do (`crops_in_loader`: the device then only normalises, and jitters colours
    for crop_color), to the crop size `load_size` × 7/8 (ImageNet's 224 of 256; bench.data.create_dataset
    sets load_size to img_size × 8/7):

        crop_rand, crop_color  RandomResizedCrop(scale 0.2–1, ratio 3/4–4/3, bicubic) of the whole
                               image + horizontal flip (MAE's pre-training and fine-tune crop)
        crop_fixed             resize the short side to load_size (bicubic), a random crop + flip
        none                   resize the short side to load_size (bicubic), the centre crop — the
                               official eval transform (256 → 224)

    A sample's draws are seeded by (seed, epoch, its index), so they do not depend on which
    worker or rank decodes it. Labels are the sorted positions of `classes` (train/'s class
    folders) in every split: an image of val/ in a class train/ lacks is an error naming its
    folder; a class missing from val/ is allowed (never tested). `workers`: None follows the
    machine at each pass (`loader_workers`)."""

    crops_in_loader = True

    def __init__(self, root: Path, split: str, load_size: int, limit: int | None, workers: int | None = None,
                 classes: list[str] | None = None):
        from torchvision.transforms import InterpolationMode, v2

        from bench.data.augment import RRC_RATIO, RRC_SCALE

        crop, bicubic = round(load_size * 7 / 8), InterpolationMode.BICUBIC
        resize = v2.Resize(load_size, interpolation=bicubic, antialias=True)
        self.transforms = {
            "rrc": v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(crop, scale=RRC_SCALE, ratio=RRC_RATIO,
                                                                      interpolation=bicubic, antialias=True),
                               v2.RandomHorizontalFlip()]),
            "fixed": v2.Compose([v2.PILToTensor(), resize, v2.RandomCrop(crop), v2.RandomHorizontalFlip()]),
            "eval": v2.Compose([v2.PILToTensor(), resize, v2.CenterCrop(crop)]),
        }
        self.root, self.name, self.load_size, self.workers = Path(root), "imagefolder", load_size, workers
        self.classes = list(classes) if classes is not None else class_folders(self.root)
        index = {cls: i for i, cls in enumerate(self.classes)}
        folder_classes, images = list_split(self.root)
        strange = [cls for cls in folder_classes if cls not in index]
        if strange:
            raise ConfigError("imagefolder", f"has class folder {strange[0]} that train/ lacks; expected only classes "
                                             "of train/ (labels are the sorted positions of train/'s class folders)",
                              str(self.root / strange[0]))
        samples = [(str(self.root / path), index[cls]) for cls, path, _ in images]
        if limit is not None:
            if limit > len(samples):
                raise limit_error(self.name, "train" if split == "train" else "test", limit, len(samples), self.root)
            samples = [samples[i] for i in stratified_subset([lab for _, lab in samples], limit, len(self.classes),
                                                             split)]
        self.samples = samples
        self.num_classes = len(self.classes)
        self.mean, self.std = dataset_entry("imagefolder").stats
        self.length = len(samples)
        self.labels = torch.tensor([lab for _, lab in samples], dtype=torch.int64)
        self._loader: dict[str, torch.utils.data.DataLoader] = {}

    channels = 3
    frames = None  # images, not clips

    @property
    def size(self) -> int:
        return round(self.load_size * 7 / 8)  # the crop the workers hand out

    def __len__(self) -> int:
        return self.length

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, device="cpu", start: int = 0, shard: Shard = WHOLE,
                augmentation: str = "none"):
        """Batches of (uint8 images, labels) on `device`, decoded and cropped by the loader's workers
        as `augmentation` says (the class docstring); with `shard` (rank, world), only this rank's
        share of each (bench.data.shards) is read and decoded."""
        order = batch_order(self.length, seed, epoch).tolist() if shuffle else list(range(self.length))
        kind = {"crop_rand": "rrc", "crop_color": "rrc", "crop_fixed": "fixed"}.get(augmentation, "eval")
        loader = self._loader.get(str(device))
        if loader is None:  # one loader per device: its workers stay up from one pass to the next
            workers = loader_workers() if self.workers is None else self.workers
            loader = torch.utils.data.DataLoader(
                _FolderImages(self.samples, self.transforms), batch_sampler=_Steps(), num_workers=workers,
                pin_memory=torch.device(device).type == "cuda", persistent_workers=workers > 0, collate_fn=_collate,
                generator=torch.Generator().manual_seed(0))  # its workers' seeds: not from the process's stream
            self._loader[str(device)] = loader
        loader.batch_sampler.steps = [[(i, kind, (seed * 1_000_003 + epoch) * 10_000_019 + i) for i in rows]
                                      for rows in step_rows(order, batch_size, drop_last, start, shard)]
        for batch in loader:
            if isinstance(batch, Unreadable):
                raise batch.error()
            images, labels = batch
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


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


def load_imagefolder(name: str, split: str, data_root: str | None, *, limit: int | None,
                     load_size: int) -> ImageFolderSet:
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
