"""Datasets streamed from disk through DataLoader workers, in the deterministic order of
bench.data.datasets.batch_order: ImageFolder trees (`ImageFolderSet`), and the pieces the video
folders (bench.data.video) share — one persistent loader per device (`streamed_batches`), the worker
count (`loader_workers`), the batch sampler set before each pass (`Steps`), and the file a worker
could not read handed back as one line (`Unreadable`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import torch

from bench.core.errors import ConfigError
from bench.data import dataset_entry
from bench.data.datasets import batch_order
from bench.data.files import IMAGE_MODES, class_folders, limit_error, list_split
from bench.data.shards import WHOLE, Shard, step_rows
from bench.data.subset import stratified_subset


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


class FolderImages(torch.utils.data.Dataset):
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


class Steps:
    """A DataLoader's batch sampler whose steps (lists of sample indices) are set before each pass,
    so one loader, and its persistent workers, serve every epoch."""

    def __init__(self):
        self.steps: list[list] = []

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


def collate(items: list):
    """A batch of the items, or the first Unreadable among them."""
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
        steps = [[(i, kind, (seed * 1_000_003 + epoch) * 10_000_019 + i) for i in rows]
                 for rows in step_rows(order, batch_size, drop_last, start, shard)]
        yield from streamed_batches(self._loader, device, lambda: FolderImages(self.samples, self.transforms),
                                    self.workers, steps)


def streamed_batches(loaders: dict, device, dataset_of: Callable[[], torch.utils.data.Dataset],
                     workers: int | None, steps: list[list]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, labels) batches on `device`, one per step (a list of the dataset's items), read by
    the DataLoader kept in `loaders` for this device — made on the first pass from `dataset_of()`,
    its workers (`workers`; None: `loader_workers()`) staying up from one pass to the next. A batch
    holding a file a worker could not read raises that file's one-line error here."""
    loader = loaders.get(str(device))
    if loader is None:
        workers = loader_workers() if workers is None else workers
        loader = torch.utils.data.DataLoader(
            dataset_of(), batch_sampler=Steps(), num_workers=workers, pin_memory=torch.device(device).type == "cuda",
            persistent_workers=workers > 0, collate_fn=collate,
            generator=torch.Generator().manual_seed(0))  # its workers' seeds: not from the process's stream
        loaders[str(device)] = loader
    loader.batch_sampler.steps = steps
    for batch in loader:
        if isinstance(batch, Unreadable):
            raise batch.error()
        inputs, labels = batch
        yield inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
