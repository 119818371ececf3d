"""Data: the registry of datasets and of augmentation presets. Imports no torch.

Datasets are read from files already on the machine — nothing is downloaded:

    fashion_mnist  the IDX files (gzipped or not), e.g. Debian's `dataset-fashion-mnist`
    cifar10        the python-pickle folder `cifar-10-batches-py`
    cifar100       the python-pickle folder `cifar-100-python`
    imagefolder    an ImageNet-style tree: <root>/train/<class>/*.JPEG and <root>/val/<class>/...
    synthetic      10 classes of oriented gratings, generated in memory (for tests)

Each entry names its loader as "module:function" (bench.data.datasets), imported by
`create_dataset` on first use, and holds the facts about the dataset that the loader and the
run need: where it is looked for, how to get it, its per-channel mean and std. Augmentation
presets (MAE Table 1e) are applied batched on the device by bench.data.augment.augment.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.core.errors import ConfigError
from bench.core import registry


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader and what is known about it."""

    name: str
    load: str  # "module:function", called as (name, split, data_root, limit=, load_size=) -> data set
    stats: tuple  # (per-channel mean, per-channel std) of the training images, in [0, 1]
    folders: tuple = ()  # sub-folders of each search root where the dataset is looked for
    how_to_get: str = ""  # the end of the error when it is not found
    test_split: str = "test"  # the name of the held-out split on disk
    doc: str = ""


@dataclass(frozen=True)
class AugmentationEntry:
    name: str
    doc: str = ""


_datasets = registry.Registry("dataset", "data.name")
_augmentations = registry.Registry("augmentation", "data.augmentation")


def register_dataset(name: str, load: str, stats: tuple, folders: tuple = (), how_to_get: str = "",
                     test_split: str = "test", doc: str = "") -> DatasetEntry:
    """File the dataset `name`, read by the "module:function" `load`."""
    return _datasets.add(name, DatasetEntry(name, load, stats, tuple(folders), how_to_get, test_split, doc))


def list_datasets() -> tuple[str, ...]:
    return _datasets.names()


def dataset_entry(name: str) -> DatasetEntry:
    """The registered entry `name` (a one-line ConfigError on data.name otherwise)."""
    return _datasets.get(name)


def create_dataset(data_cfg: dict, split: str, data_root: str | None = None):
    """The `split` ('train' or 'test') of the dataset in the run config's `data` section: an
    ImageSet (in memory) or an ImageFolderSet (streamed), loaded once per process and argument set."""
    name = data_cfg["name"]
    if name not in _datasets:
        raise ConfigError("data.name", f"{name!r} is not allowed; allowed: one of {', '.join(_datasets)}")
    limit = data_cfg.get("train_limit") if split == "train" else data_cfg.get("test_limit")
    split_name = "train" if split == "train" else _datasets.get(name).test_split
    load_size = round(data_cfg["img_size"] * 8 / 7)  # ImageNet's 256 for 224 px crops
    return registry.load("bench.data.datasets:load_cached")(name, split_name, data_root, limit, load_size)


def register_augmentation(name: str, doc: str = "") -> AugmentationEntry:
    """File the augmentation preset `name` (its implementation lives in bench.data.augment)."""
    return _augmentations.add(name, AugmentationEntry(name, doc))


def list_augmentations() -> tuple[str, ...]:
    return _augmentations.names()


def is_augmentation(name: str) -> bool:
    return name in _augmentations


# ----------------------------------------------------------------------------- datasets
register_dataset(
    "fashion_mnist", "bench.data.datasets:load_fashion_mnist", ((0.2860,), (0.3530,)),
    folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    how_to_get="install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
               "or put the four *-idx?-ubyte[.gz] files in a folder and pass --data-root",
    doc="Fashion-MNIST's IDX files (gzipped or not), 28 px grey, 10 classes")
register_dataset(
    "cifar10", "bench.data.datasets:load_cifar10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    folders=("cifar-10-batches-py",),
    how_to_get="unpack cifar-10-python.tar.gz and pass its folder with --data-root",
    doc="CIFAR-10's python pickles, 32 px colour, 10 classes")
register_dataset(
    "cifar100", "bench.data.datasets:load_cifar100", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    folders=("cifar-100-python",),
    how_to_get="unpack cifar-100-python.tar.gz and pass its folder with --data-root",
    doc="CIFAR-100's python pickles, 32 px colour, 100 fine classes")
register_dataset(
    "imagefolder", "bench.data.datasets:load_imagefolder", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    folders=("imagenet",), how_to_get="pass the folder holding train/ and val/ with --data-root", test_split="val",
    doc="an ImageNet-style tree <root>/{train,val}/<class>/*, streamed and resized")
register_dataset(
    "synthetic", "bench.data.datasets:load_synthetic", ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    doc="10 classes of oriented colour gratings, generated in memory (for tests)")

# ----------------------------------------------------------------------------- augmentations
register_augmentation("none", doc="the whole image, resized to the model's input")
register_augmentation("crop_fixed", doc="a random crop of fixed size (7/8 of the side) + horizontal flip")
register_augmentation("crop_rand", doc="random-resized crop, scale 0.2–1, aspect 3/4–4/3 + horizontal flip "
                                       "(MAE's default)")
register_augmentation("crop_color", doc="crop_rand + color jitter (brightness, contrast, saturation 0.4)")
