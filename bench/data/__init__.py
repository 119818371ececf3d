"""Data: the registry of datasets and of augmentation presets. Imports no torch.

Datasets are read from files already on the machine — nothing is downloaded:

    fashion_mnist  the IDX files (gzipped or not), e.g. Debian's `dataset-fashion-mnist`
    cifar10        the python-pickle folder `cifar-10-batches-py`
    cifar100       the python-pickle folder `cifar-100-python`
    imagefolder    an ImageNet-style tree: <root>/train/<class>/*.JPEG and <root>/val/<class>/...
    synthetic      10 classes of oriented gratings, generated in memory (for tests)

and two video datasets (bench.data.video; `video=True`, clips of data.frames frames every
data.frame_stride frames, uint8 B×C×T×H×W):

    moving_fashion_mnist  Fashion-MNIST garments moving on a 32 px torus, labelled by the direction
                          of motion (8), generated in memory from the fashion_mnist IDX files
    videofolder           <root>/{train,val}/<class>/<clip>.mp4 (UCF101, Kinetics), or VideoMAE's
                          list files <root>/{train,val}.csv of videos or frames folders (SSv2)

Each entry names its loader as "module:function" (bench.data.datasets), imported by
`create_dataset` on first use, and holds the facts about the dataset that the loader and the
run need: where it is looked for, how to get it, its channels, its per-channel mean and std.
Augmentation presets (MAE Table 1e) are applied batched on the device by bench.data.augment.augment.

`check_data(name, data_root, limits)` is the cheap look before anything runs (`mimbench plan` and
`run` call it once per study and data section): the data root exists, and the dataset's files are
there and read as the dataset's format says — headers and counts, not every pixel —, its labels
are in one label space (an ImageFolder's val/ has no class train/ lacks), and a limit is not
larger than its split. A bad file stops with one line naming it and what was expected; the loaders
(bench.data.datasets) say the same of what they read, a file that breaks while a run reads it
included.

`identify(data_cfg, data_root)` says which data that is (bench.data.identity: file names, sizes,
sampled bytes, the limits and the subset rule, and a 12-hex digest of it all), torch-free and
cheap; `bench.study.spec.load_study` puts the digest in each run's `data.identity`, so a run id
and every cache key built from the config name the data as well as the settings. A dataset's
`default_identity` (Debian's Fashion-MNIST, whole) is left out of the run id, so those ids stay
as they were. A limit draws a seeded, class-stratified subset (bench.data.subset), not the first N.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import ConfigError
from bench.core import registry

DEBIAN_DATASETS = Path("/usr/share/datasets")


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
    channels: int = 3  # of the images the model sees (a patch holds patch_size² × channels numbers)
    check: str = ""  # "module:function", called as (name, data_root): the cheap look at the files
    identify: str = ""  # "module:function", called as (name, data_root) -> (folder read, identity's content)
    count: str = ""  # "module:function", called as (name, data_root, split) -> (images in split or None, where)
    default_identity: str | None = None  # the digest left out of the run id (bench.study.run_ids.hashed_part)
    video: bool = False  # clips (uint8 B×C×T×H×W, T = data.frames), not images


@dataclass(frozen=True)
class AugmentationEntry:
    name: str
    doc: str = ""


_datasets = registry.Registry("dataset", "data.name")
_augmentations = registry.Registry("augmentation", "data.augmentation")


def register_dataset(name: str, load: str, stats: tuple, folders: tuple = (), how_to_get: str = "",
                     test_split: str = "test", doc: str = "", channels: int | None = None,
                     check: str = "", identify: str = "", count: str = "",
                     default_identity: str | None = None, video: bool = False) -> DatasetEntry:
    """File the dataset `name`, read by the "module:function" `load`; `check` ("module:function",
    called as (name, data_root)) looks at its files before anything runs, `identify` says which
    files they are (bench.data.identity), `count` how many images a split holds (for the check of
    a limit). `default_identity`: the digest of the copy most runs read (left out of run ids).
    `video`: its samples are clips of data.frames frames (bench.data.video), not images.
    `channels` defaults to the number of per-channel means in `stats`."""
    channels = len(stats[0]) if channels is None else channels
    return _datasets.add(name, DatasetEntry(name, load, stats, tuple(folders), how_to_get, test_split, doc,
                                            channels, check, identify, count, default_identity, video))


def list_datasets() -> tuple[str, ...]:
    return _datasets.names()


def dataset_entry(name: str) -> DatasetEntry:
    """The registered entry `name` (a one-line ConfigError on data.name otherwise)."""
    return _datasets.get(name)


def create_dataset(data_cfg: dict, split: str, data_root: str | None = None):
    """The `split` ('train' or 'test') of the dataset in the run config's `data` section: an
    ImageSet (in memory) or an ImageFolderSet (streamed), loaded once per process and argument set
    (its `identity` included: files identified as changed are read again). A limit draws the
    seeded, class-stratified subset of bench.data.subset. A video dataset (entry.video) is given
    data.frames and data.frame_stride and returns clips (its `frames` is T); data.frames is null
    for an image dataset and set for a video dataset (a one-line ConfigError otherwise)."""
    name = data_cfg["name"]
    if name not in _datasets:
        raise ConfigError("data.name", f"{name!r} is not allowed; allowed: one of {', '.join(_datasets)}")
    entry, frames = _datasets.get(name), data_cfg.get("frames")
    if entry.video and frames is None:
        raise ConfigError("data.frames", f"null is not allowed for {name}, a video dataset; allowed: the frames "
                                         "per clip, an integer at least 1")
    if not entry.video and frames is not None:
        video_sets = ", ".join(n for n in _datasets if _datasets.get(n).video)
        raise ConfigError("data.frames", f"{frames!r} is not allowed for {name}, an image dataset; allowed: null "
                                         f"(or a video dataset: {video_sets})")
    video = (frames, data_cfg.get("frame_stride", 1)) if entry.video else ()
    limit = data_cfg.get("train_limit") if split == "train" else data_cfg.get("test_limit")
    split_name = "train" if split == "train" else entry.test_split
    load_size = round(data_cfg["img_size"] * 8 / 7)  # ImageNet's 256 for 224 px crops
    return registry.load("bench.data.datasets:load_cached")(name, split_name, data_root, limit, load_size,
                                                            data_cfg.get("identity"), *video)


def identify(data_cfg: dict, data_root: str | None) -> dict:
    """The identity of the data the config's `data` section reads where a launch with `data_root`
    reads it (bench.data.identity): torch-free, cheap. A one-line ConfigError when it cannot be
    found or read."""
    from bench.data.identity import identify_read

    return identify_read(data_cfg, data_root)[0]


def identify_read(data_cfg: dict, data_root: str | None) -> tuple[dict, str | None]:
    """(identify(...), the folder the data is read from; None for generated data)."""
    from bench.data.identity import identify_read as read

    return read(data_cfg, data_root)


def identity_digest(data_cfg: dict, data_root: str | None, memo: dict | None = None) -> str | None:
    """The digest of identify(data_cfg, data_root) — the value of the config key `data.identity` —,
    or None when the data cannot be found or read (`check_data` says why). `memo` keeps it per
    distinct (name, limits, data_root), so a study identifies each data section once."""
    key = (data_cfg["name"], data_cfg.get("train_limit"), data_cfg.get("test_limit"), data_root)
    if memo is None or key not in memo:
        try:
            value = identify(data_cfg, data_root)["digest"]
        except ConfigError:
            value = None
        if memo is None:
            return value
        memo[key] = value
    return memo[key]


def is_default_identity(name: str, identity: str | None) -> bool:
    """True when `identity` (a digest) says nothing a run id needs: null (not identified), or the
    registered default identity of the dataset `name`."""
    if identity is None:
        return True
    if not isinstance(name, str) or name not in _datasets:
        return False
    default = _datasets.get(name).default_identity
    return default is not None and identity == default


# ----------------------------------------------------------------------------- finding and checking files
def search_roots(data_root: str | None) -> list[Path]:
    """Where data is looked for, first match wins: --data-root, $MIMBENCH_DATA, Debian's folder."""
    roots = [Path(data_root)] if data_root else []
    if os.environ.get("MIMBENCH_DATA"):
        roots.append(Path(os.environ["MIMBENCH_DATA"]))
    roots.append(DEBIAN_DATASETS)
    return roots


def find_root(name: str, data_root: str | None, marker: str) -> Path:
    """The first folder that holds `marker`: each search root itself, then its standard sub-folders."""
    tried, entry = [], dataset_entry(name)
    for root in search_roots(data_root):
        for folder in [root] + [root / sub for sub in entry.folders]:
            tried.append(str(folder))
            if (folder / marker).exists() or (folder / (marker + ".gz")).exists():
                return folder
    raise ConfigError("data.name", f"{name} not found (looked for {marker} in {', '.join(tried)}); "
                                   f"{entry.how_to_get}")


def check_data(name: str, data_root: str | None, limits: dict | None = None) -> None:
    """The cheap look at a dataset's files before anything runs (headers and counts, not every
    pixel), and at `limits` ({"train": data.train_limit, "test": data.test_limit}): a one-line
    ConfigError naming the folder or file and what was expected otherwise."""
    entry = dataset_entry(name)
    if data_root is not None and not Path(data_root).is_dir():
        what = "does not exist" if not Path(data_root).exists() else "is not a folder"
        raise ConfigError("launch.data_root", f"{data_root} {what}; allowed: a folder holding the data"
                                              f"{' (' + entry.how_to_get + ')' if entry.how_to_get else ''}")
    if entry.check:
        registry.load(entry.check)(name, data_root)
    for split, limit in (limits or {}).items():
        if limit is not None and entry.count:
            split_name = "train" if split == "train" else entry.test_split
            count, where = registry.load(entry.count)(name, data_root, split_name)
            if count is not None and limit > count:
                raise registry.load("bench.data.files:limit_error")(name, split, limit, count, where)


def register_augmentation(name: str, doc: str = "") -> AugmentationEntry:
    """File the augmentation preset `name` (its implementation lives in bench.data.augment)."""
    return _augmentations.add(name, AugmentationEntry(name, doc))


def list_augmentations() -> tuple[str, ...]:
    return _augmentations.names()


def is_augmentation(name: str) -> bool:
    return name in _augmentations


# ----------------------------------------------------------------------------- datasets
DEBIAN_FASHION_MNIST = "606cdc38eb87"  # the digest of Debian's Fashion-MNIST, whole: see fashion_mnist's entry
register_dataset(
    "fashion_mnist", "bench.data.datasets:load_fashion_mnist", ((0.2860,), (0.3530,)), channels=1,
    check="bench.data.files:check_fashion_mnist", folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    how_to_get="install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
               "or put the four *-idx?-ubyte[.gz] files in a folder and pass --data-root",
    doc="Fashion-MNIST's IDX files (gzipped or not), 28 px grey, 10 classes",
    identify="bench.data.identity:identify_fashion_mnist", count="bench.data.files:count_fashion_mnist",
    # Debian's dataset-fashion-mnist as installed in /usr/share/datasets/fashion-mnist (the four .gz
    # files), whole: runs on it keep the ids they had before data.identity existed. To recompute:
    #   python3 -c "from bench.data import identify; print(identify({'name': 'fashion_mnist'}, '/usr/share/datasets')['digest'])"
    default_identity=DEBIAN_FASHION_MNIST)
register_dataset(
    "cifar10", "bench.data.datasets:load_cifar10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    channels=3, check="bench.data.files:check_cifar", folders=("cifar-10-batches-py",),
    how_to_get="unpack cifar-10-python.tar.gz and pass its folder with --data-root",
    doc="CIFAR-10's python pickles, 32 px colour, 10 classes",
    identify="bench.data.identity:identify_cifar", count="bench.data.files:count_cifar")
register_dataset(
    "cifar100", "bench.data.datasets:load_cifar100", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    channels=3, check="bench.data.files:check_cifar", folders=("cifar-100-python",),
    how_to_get="unpack cifar-100-python.tar.gz and pass its folder with --data-root",
    doc="CIFAR-100's python pickles, 32 px colour, 100 fine classes",
    identify="bench.data.identity:identify_cifar", count="bench.data.files:count_cifar")
register_dataset(
    "imagefolder", "bench.data.datasets:load_imagefolder", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    channels=3, check="bench.data.files:check_imagefolder", folders=("imagenet",), how_to_get="pass the folder holding train/ and val/ with --data-root", test_split="val",
    doc="an ImageNet-style tree <root>/{train,val}/<class>/*, streamed and resized",
    identify="bench.data.identity:identify_imagefolder", count="bench.data.files:count_imagefolder")
register_dataset(
    "synthetic", "bench.data.datasets:load_synthetic", ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), channels=3,
    doc="10 classes of oriented colour gratings, generated in memory (for tests)",
    identify="bench.data.identity:identify_synthetic", count="bench.data.files:count_synthetic")

register_dataset(
    "moving_fashion_mnist", "bench.data.video:load_moving_fashion_mnist", ((0.0712,), (0.2024,)), channels=1,
    # the mean and std of all pixels of all 16 raw frames of the generated train split; to recompute:
    #   python3 -c "from bench.data import create_dataset as c; x = c({'name': 'moving_fashion_mnist', \
    #   'img_size': 32, 'frames': 16}, 'train').images.double() / 255; print(x.mean(), x.std())"
    check="bench.data.files:check_fashion_mnist", folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    how_to_get="install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
               "or put the four *-idx?-ubyte[.gz] files in a folder and pass --data-root",
    doc="clips of a Fashion-MNIST garment moving on a 32 px torus, grey, 16 frames; 8 classes: the direction of "
        "motion (generated from Fashion-MNIST's IDX files, bench.data.video)",
    identify="bench.data.identity:identify_moving_fashion_mnist",
    count="bench.data.files:count_moving_fashion_mnist", video=True)
register_dataset(
    "videofolder", "bench.data.video:load_videofolder", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    channels=3, check="bench.data.files:check_videofolder", test_split="val",
    how_to_get="pass the folder holding train/ and val/ class folders of clips, or the list files train.csv "
               "and val.csv, with --data-root",
    doc="clips: <root>/{train,val}/<class>/*.mp4|webm|avi|mkv, or VideoMAE's list files of videos or frames "
        "folders; decoded (PyAV) in DataLoader workers and resized",
    identify="bench.data.identity:identify_videofolder", count="bench.data.files:count_videofolder", video=True)

# ----------------------------------------------------------------------------- augmentations
register_augmentation("none", doc="the whole image, resized to the model's input")
register_augmentation("crop_fixed", doc="a random crop of fixed size (7/8 of the side) + horizontal flip")
register_augmentation("crop_rand", doc="random-resized crop, scale 0.2–1, aspect 3/4–4/3 + horizontal flip "
                                       "(MAE's default)")
register_augmentation("crop_color", doc="crop_rand + color jitter (brightness, contrast, saturation 0.4)")
