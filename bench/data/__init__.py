"""Data: the registry of datasets and of augmentation presets. Imports no torch.

Datasets are read from files already on the machine — nothing is downloaded:

    fashion_mnist  the IDX files (gzipped or not), e.g. Debian's `dataset-fashion-mnist`
    cifar10        the python-pickle folder `cifar-10-batches-py`
    cifar100       the python-pickle folder `cifar-100-python`
    imagefolder    an ImageNet-style tree: <root>/train/<class>/*.JPEG and <root>/val/<class>/...
    synthetic      10 classes of oriented gratings, generated in memory (for tests)

Each entry names its loader as "module:function" (bench.data.datasets), imported by
`create_dataset` on first use, and holds the facts about the dataset that the loader and the
run need: where it is looked for, how to get it, its channels, its per-channel mean and std.
Augmentation presets (MAE Table 1e) are applied batched on the device by bench.data.augment.augment.

`check_data(name, data_root)` is the cheap look before anything runs (`mimbench plan` and
`run` call it once per study): the data root exists, and the dataset's files are there and read
as the dataset's format says — headers and counts, not every pixel. A bad file stops with one
line naming it and what was expected; the loaders (bench.data.datasets) say the same of what
they read.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
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


@dataclass(frozen=True)
class AugmentationEntry:
    name: str
    doc: str = ""


_datasets = registry.Registry("dataset", "data.name")
_augmentations = registry.Registry("augmentation", "data.augmentation")


def register_dataset(name: str, load: str, stats: tuple, folders: tuple = (), how_to_get: str = "",
                     test_split: str = "test", doc: str = "", channels: int | None = None,
                     check: str = "") -> DatasetEntry:
    """File the dataset `name`, read by the "module:function" `load`; `check` ("module:function",
    called as (name, data_root)) looks at its files before anything runs. `channels` defaults to
    the number of per-channel means in `stats`."""
    channels = len(stats[0]) if channels is None else channels
    return _datasets.add(name, DatasetEntry(name, load, stats, tuple(folders), how_to_get, test_split, doc,
                                            channels, check))


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


def check_data(name: str, data_root: str | None) -> None:
    """The cheap look at a dataset's files before anything runs (headers and counts, not every
    pixel): a one-line ConfigError naming the folder or file and what was expected otherwise."""
    entry = dataset_entry(name)
    if data_root is not None and not Path(data_root).is_dir():
        what = "does not exist" if not Path(data_root).exists() else "is not a folder"
        raise ConfigError("launch.data_root", f"{data_root} {what}; allowed: a folder holding the data"
                                              f"{' (' + entry.how_to_get + ')' if entry.how_to_get else ''}")
    if entry.check:
        registry.load(entry.check)(name, data_root)


def _bad_file(name: str, path: Path, message: str) -> ConfigError:
    return ConfigError(name, message, str(path))


def idx_file(folder: Path, stem: str) -> Path:
    """`stem` in `folder`, plain or gzipped (plain first)."""
    plain = folder / stem
    return plain if plain.exists() else folder / (stem + ".gz")


def idx_header(name: str, path: Path, ndim: int) -> tuple[int, ...]:
    """The shape an unsigned-byte IDX file of `ndim` dimensions declares, after checking that the
    file holds exactly that many bytes (a gzip's trailer says its length without inflating it)."""
    expected = f"an unsigned-byte IDX file of {ndim} dimension{'s' if ndim > 1 else ''}"
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
        if len(head) < 4 or head[:3] != b"\0\0\x08" or head[3] != ndim or len(head) < 4 + 4 * ndim:
            raise _bad_file(name, path, f"not {expected} (header {head[:4].hex() or 'empty'}); expected {expected}")
        shape = struct.unpack(">" + "I" * ndim, head[4:4 + 4 * ndim])
        size = 4 + 4 * ndim + _product(shape)
        if path.suffix == ".gz":
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                actual = struct.unpack("<I", f.read(4))[0]  # ISIZE: the inflated length mod 2**32
            ok = actual == size % 2 ** 32
        else:
            actual = path.stat().st_size
            ok = actual == size
    except ConfigError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        raise _bad_file(name, path, f"cannot be read ({' '.join(str(err).split()) or type(err).__name__}); "
                                    f"expected {expected}") from None
    if not ok:
        shape_text = "x".join(map(str, shape))
        raise _bad_file(name, path, f"holds {actual} bytes{' (inflated, mod 2**32)' if path.suffix == '.gz' else ''}"
                                    f", not the {size} its header declares ({shape_text}): truncated or corrupt; "
                                    f"expected {expected}")
    return shape


def _product(shape: tuple) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def check_fashion_mnist(name: str, data_root: str | None) -> None:
    """Both splits' IDX files: images N×H×W and labels N, the same N, labels below 10."""
    for prefix in ("train", "t10k"):
        folder = find_root(name, data_root, f"{prefix}-images-idx3-ubyte")
        images_path = idx_file(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = idx_file(folder, f"{prefix}-labels-idx1-ubyte")
        if not labels_path.exists():
            raise _bad_file(name, labels_path.with_suffix(""), f"is missing beside {images_path.name}; expected the "
                                                              f"labels of {prefix} as an IDX file (.gz or not)")
        images, labels = idx_header(name, images_path, 3), idx_header(name, labels_path, 1)
        if not images[0] or not images[1] or not images[2]:
            raise _bad_file(name, images_path, f"holds {'x'.join(map(str, images))} images; expected N x H x W, "
                                               "all at least 1")
        if images[0] != labels[0]:
            raise _bad_file(name, labels_path, f"holds {labels[0]} labels for {images[0]} images in "
                                               f"{images_path.name}; expected one label per image")
        opener = gzip.open if labels_path.suffix == ".gz" else open
        try:
            with opener(labels_path, "rb") as f:
                data = f.read()[8:]
        except (OSError, EOFError, zlib.error) as err:
            raise _bad_file(name, labels_path, f"cannot be read ({' '.join(str(err).split())}); expected an "
                                               "unsigned-byte IDX file of 1 dimension") from None
        if len(data) != labels[0]:
            raise _bad_file(name, labels_path, f"holds {len(data)} labels, not the {labels[0]} its header declares: "
                                               "truncated or corrupt")
        if data and max(data) >= 10:
            raise _bad_file(name, labels_path, f"holds label {max(data)}; expected labels 0..9")


def check_cifar(name: str, data_root: str | None) -> None:
    """Each pickle is there, readable, and whole (a pickle's header, and its STOP at the end)."""
    folder = find_root(name, data_root, CIFAR_FILES[name]["train"][0])
    for file in CIFAR_FILES[name]["train"] + CIFAR_FILES[name]["test"]:
        path = folder / file
        expected = f"{name}'s python pickle {file} ({dataset_entry(name).how_to_get})"
        try:
            with open(path, "rb") as f:
                head = f.read(2)
                f.seek(0, os.SEEK_END)
                length = f.tell()
                if length:
                    f.seek(-1, os.SEEK_END)
                tail = f.read(1)
        except OSError as err:
            raise _bad_file(name, path, f"cannot be read ({err.strerror or err}); expected {expected}") from None
        if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5 or tail != b".":
            what = "empty" if not length else "truncated" if head[:1] == b"\x80" else "not a pickle"
            raise _bad_file(name, path, f"is {what} ({length} bytes); expected {expected}")


CIFAR_FILES = {  # name -> split -> the pickles it is read from
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    "cifar100": {"train": ["train"], "test": ["test"]},
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "La")  # 8-bit: to RGB


def check_image(name: str, path: Path) -> None:
    """The image at `path` opens, and its mode converts to 8-bit RGB (16-bit and float images do not)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            mode = img.mode
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _bad_file(name, path, f"is not a readable image ({' '.join(str(err).split()) or type(err).__name__}); "
                                    f"expected a JPEG, PNG or other image ({', '.join(IMAGE_EXTENSIONS)})") from None
    if mode not in IMAGE_MODES:
        raise _bad_file(name, path, f"has image mode {mode}; expected an 8-bit image, one of {', '.join(IMAGE_MODES)}")


def imagefolder_split(name: str, data_root: str | None, split: str) -> Path:
    """The folder <root>/<sub>/<split> of the first search root that has one."""
    roots, entry = search_roots(data_root), dataset_entry(name)
    folder = next((r / sub / split for r in roots for sub in ("", *entry.folders) if (r / sub / split).is_dir()),
                  None)
    if folder is None:
        raise ConfigError("data.name", f"imagefolder: no {split}/ folder under "
                                       f"{', '.join(map(str, roots))}; {entry.how_to_get}")
    return folder


def check_imagefolder(name: str, data_root: str | None) -> None:
    """train/ and val/ have the same class folders, each with at least one image; the first image of
    each class opens and is 8-bit."""
    entry = dataset_entry(name)
    classes_of = {}
    for split in ("train", entry.test_split):
        folder = imagefolder_split(name, data_root, split)
        try:
            classes = sorted(d.name for d in os.scandir(folder) if d.is_dir())
        except OSError as err:
            raise _bad_file(name, folder, f"cannot be listed ({err.strerror or err}); expected a folder of class "
                                          "folders") from None
        if not classes:
            raise _bad_file(name, folder, "has no class folders; expected <class>/<image> folders")
        for cls in classes:
            try:
                with os.scandir(folder / cls) as entries:  # the first image is enough: no listing of them all
                    first = next((Path(e.path) for e in entries
                                  if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()), None)
            except OSError as err:
                raise _bad_file(name, folder / cls, f"cannot be listed ({err.strerror or err}); expected a folder "
                                                    "of images") from None
            if first is None:
                raise _bad_file(name, folder / cls, f"holds no image; expected at least one file ending in "
                                                    f"{', '.join(IMAGE_EXTENSIONS)} in every class folder")
            check_image(name, first)
        classes_of[split] = classes
    train, test = classes_of["train"], classes_of[entry.test_split]
    if train != test:
        odd = sorted(set(train) ^ set(test))
        raise _bad_file(name, folder, f"has classes {', '.join(test[:3])}{'...' if len(test) > 3 else ''} "
                                      f"({len(test)}), train/ has {len(train)}, differing in {', '.join(odd[:3])}"
                                      f"{'...' if len(odd) > 3 else ''}; expected the same class folders in both "
                                      "(labels are their sorted positions)")


def register_augmentation(name: str, doc: str = "") -> AugmentationEntry:
    """File the augmentation preset `name` (its implementation lives in bench.data.augment)."""
    return _augmentations.add(name, AugmentationEntry(name, doc))


def list_augmentations() -> tuple[str, ...]:
    return _augmentations.names()


def is_augmentation(name: str) -> bool:
    return name in _augmentations


# ----------------------------------------------------------------------------- datasets
register_dataset(
    "fashion_mnist", "bench.data.datasets:load_fashion_mnist", ((0.2860,), (0.3530,)), channels=1,
    check="bench.data:check_fashion_mnist", folders=("fashion-mnist", "fashion_mnist", "FashionMNIST/raw"),
    how_to_get="install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
               "or put the four *-idx?-ubyte[.gz] files in a folder and pass --data-root",
    doc="Fashion-MNIST's IDX files (gzipped or not), 28 px grey, 10 classes")
register_dataset(
    "cifar10", "bench.data.datasets:load_cifar10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    channels=3, check="bench.data:check_cifar", folders=("cifar-10-batches-py",),
    how_to_get="unpack cifar-10-python.tar.gz and pass its folder with --data-root",
    doc="CIFAR-10's python pickles, 32 px colour, 10 classes")
register_dataset(
    "cifar100", "bench.data.datasets:load_cifar100", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    channels=3, check="bench.data:check_cifar", folders=("cifar-100-python",),
    how_to_get="unpack cifar-100-python.tar.gz and pass its folder with --data-root",
    doc="CIFAR-100's python pickles, 32 px colour, 100 fine classes")
register_dataset(
    "imagefolder", "bench.data.datasets:load_imagefolder", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    channels=3, check="bench.data:check_imagefolder", folders=("imagenet",), how_to_get="pass the folder holding train/ and val/ with --data-root", test_split="val",
    doc="an ImageNet-style tree <root>/{train,val}/<class>/*, streamed and resized")
register_dataset(
    "synthetic", "bench.data.datasets:load_synthetic", ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), channels=3,
    doc="10 classes of oriented colour gratings, generated in memory (for tests)")

# ----------------------------------------------------------------------------- augmentations
register_augmentation("none", doc="the whole image, resized to the model's input")
register_augmentation("crop_fixed", doc="a random crop of fixed size (7/8 of the side) + horizontal flip")
register_augmentation("crop_rand", doc="random-resized crop, scale 0.2–1, aspect 3/4–4/3 + horizontal flip "
                                       "(MAE's default)")
register_augmentation("crop_color", doc="crop_rand + color jitter (brightness, contrast, saturation 0.4)")
