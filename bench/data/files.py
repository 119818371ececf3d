"""The files of each dataset, looked at before anything runs (torch-free): the per-dataset checks
and counts that the registry entries name (`check`, `count`), the IDX header reader, and the
ImageFolder split and image rules, and the same for the video datasets (bench.data.video): the
videofolder layouts and their list files. Each problem is one ConfigError line naming the file.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

from bench.core.errors import ConfigError
from bench.data import dataset_entry, find_root, search_roots


def limit_error(name: str, split: str, limit: int, count: int, where) -> ConfigError:
    """data.<split>_limit larger than the split it limits: one line naming the file or folder."""
    split_name = "train" if split == "train" else dataset_entry(name).test_split
    return ConfigError(f"data.{'train' if split == 'train' else 'test'}_limit",
                       f"{limit} is more than the {count} images of {name}'s {split_name} split (in {where}); "
                       f"allowed: at most {count}, or null for all of them")


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


def count_fashion_mnist(name: str, data_root: str | None, split: str) -> tuple[int, Path]:
    """The images of a split, from its IDX header (checked by check_fashion_mnist)."""
    prefix = "train" if split == "train" else "t10k"
    path = idx_file(find_root(name, data_root, f"{prefix}-images-idx3-ubyte"), f"{prefix}-images-idx3-ubyte")
    return idx_header(name, path, 3)[0], path


def count_cifar(name: str, data_root: str | None, split: str) -> tuple[int | None, Path]:
    """The images of a split: its pickles are read (only when a limit is to be checked). None when
    one does not read as CIFAR's: the loader says what is wrong with it, naming it."""
    import pickle

    folder = find_root(name, data_root, CIFAR_FILES[name]["train"][0])
    total, files = 0, CIFAR_FILES[name]["train" if split == "train" else "test"]
    for file in files:
        try:
            with open(folder / file, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            total += len(entry[b"labels" if name == "cifar10" else b"fine_labels"])
        except Exception:  # a truncated or foreign pickle raises any of a dozen kinds
            return None, folder
    return total, folder / files[0] if len(files) == 1 else folder


def count_imagefolder(name: str, data_root: str | None, split: str) -> tuple[int, Path]:
    """The images of a split folder (one listing of it)."""

    folder = imagefolder_split(name, data_root, split)
    return len(list_split(folder)[1]), folder


SYNTHETIC_SIZES = {"train": 5000, "test": 1000}  # images make_synthetic generates per split


def count_synthetic(name: str, data_root: str | None, split: str) -> tuple[int, str]:
    return SYNTHETIC_SIZES[split], "the generated set"


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
    """Every class folder of train/ and val/ holds at least one image, the first of which opens and
    is 8-bit; val/ has no class folder train/ lacks. One label space: train/'s class folders,
    sorted, are the labels of both splits; a class missing from val/ is allowed (a val/ subsample:
    that class is then never tested), a class only in val/ is an error naming it."""
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
    only_test = sorted(set(test) - set(train))
    if only_test:
        raise _bad_file(name, folder, f"has class folder{'s' if len(only_test) > 1 else ''} "
                                      f"{', '.join(only_test[:3])}{'...' if len(only_test) > 3 else ''} that train/ "
                                      f"lacks ({len(test)} classes here, {len(train)} in train/); expected only "
                                      "classes of train/ (labels are the sorted positions of train/'s class folders)")


# ----------------------------------------------------------------------------- listing ImageFolder trees
def class_folders(folder: Path) -> list[str]:
    """The sorted names of the class folders in a split folder."""
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if e.is_dir())
    except OSError as err:
        raise ConfigError("imagefolder", f"cannot be listed ({_one_line(err)}); expected a folder of class folders",
                          str(folder)) from None


def walk_images(folder: Path, sizes: bool = False,
                extensions: tuple = IMAGE_EXTENSIONS) -> list[tuple[str, int | None]]:
    """Every image (file ending in one of `extensions`) under `folder` (sub-folders too, symbolic
    links followed once, as torchvision's ImageFolder does), as (path relative to `folder`, size in
    bytes or None), sorted by path."""
    out: list[tuple[str, int | None]] = []
    seen = {os.path.realpath(folder)}

    def walk(top: str, rel: str) -> None:
        try:
            with os.scandir(top) as it:
                entries = sorted(it, key=lambda e: e.name)
            for e in entries:
                if e.is_dir():
                    real = os.path.realpath(e.path)
                    if real not in seen:
                        seen.add(real)
                        walk(e.path, f"{rel}{e.name}/")
                elif e.name.lower().endswith(extensions) and e.is_file():
                    out.append((rel + e.name, e.stat().st_size if sizes else None))
        except OSError as err:
            raise ConfigError("imagefolder", f"cannot be listed ({_one_line(err)}); expected a folder of images",
                              top) from None

    walk(str(folder), "")
    return out


def list_split(folder: Path, sizes: bool = False,
               extensions: tuple = IMAGE_EXTENSIONS) -> tuple[list[str], list[tuple[str, str, int | None]]]:
    """A split folder's class names (sorted) and its images (or clips: `extensions`) as (class, path
    relative to the split folder, size or None), class by class, each class's sorted by path: one walk."""
    classes = class_folders(folder)
    images = [(cls, f"{cls}/{rel}", size) for cls in classes
              for rel, size in walk_images(folder / cls, sizes, extensions)]
    return classes, images


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# ----------------------------------------------------------------------------- video datasets (bench.data.video)
# What bench.data.video.make_moving_fashion_mnist draws (part of the data identity: bench.data.identity)
MOVING_FASHION_MNIST = {"canvas": 32, "garment": 16, "raw_frames": 16, "directions": 8, "speed": (1.0, 2.0),
                        "clips": {"train": 10_000, "test": 2_000}, "seeds": {"train": 0, "test": 1}}


def count_moving_fashion_mnist(name: str, data_root: str | None, split: str) -> tuple[int, str]:
    return MOVING_FASHION_MNIST["clips"]["train" if split == "train" else "test"], "the generated set"


VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
VIDEO_LIST_SUFFIXES = (".csv", ".txt")  # <root>/<split>.csv or .txt: VideoMAE's list files (space-separated)
FRAME_TEMPLATE, FRAME_START = "img_{:05d}.jpg", 1  # a frames folder's files, VideoMAE's: img_00001.jpg, ...


def video_list_file(root: Path, split: str) -> Path | None:
    """<root>/<split>.csv or <root>/<split>.txt, the first that exists; None when neither does."""
    return next((root / f"{split}{s}" for s in VIDEO_LIST_SUFFIXES if (root / f"{split}{s}").is_file()), None)


def videofolder_root(name: str, data_root: str | None) -> Path:
    """The first search root (or its standard sub-folder) holding train.csv, train.txt or train/."""
    roots, entry = search_roots(data_root), dataset_entry(name)
    for folder in (r / sub for r in roots for sub in ("", *entry.folders)):
        if video_list_file(folder, "train") is not None or (folder / "train").is_dir():
            return folder
    raise ConfigError("data.name", f"{name}: no train.csv, train.txt or train/ folder under "
                                   f"{', '.join(map(str, roots))}; {entry.how_to_get}")


def read_video_list(name: str, path: Path) -> list[tuple[str, int | None, int]]:
    """The lines of a list file as (path, frames, label): `<video file> <label>` (frames None) or
    `<frames folder> <number of frames> <label>` (VideoMAE's VideoClsDataset and RawFrameClsDataset
    lists). Paths are relative to the list's folder (or absolute) and hold no spaces; empty lines and
    lines starting with # are skipped. A bad line is one ConfigError naming file and line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise _bad_file(name, path, f"cannot be read ({_one_line(err)}); expected a list of clips") from None
    out = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) in (2, 3) and all(f.isdigit() for f in fields[1:]) and (len(fields) == 2 or int(fields[1])):
            out.append((fields[0], int(fields[1]) if len(fields) == 3 else None, int(fields[-1])))
        else:
            raise ConfigError(name, f"line {' '.join(fields)[:80]!r} is not a clip; expected '<video file> <label>' or "
                                    "'<frames folder> <number of frames, at least 1> <label>', labels 0, 1, ...",
                              f"{path}:{number}")
    if not out:
        raise _bad_file(name, path, "lists no clips; expected one '<video file> <label>' or "
                                    "'<frames folder> <number of frames> <label>' line per clip")
    return out


def videofolder_samples(name: str, data_root: str | None, split: str) -> tuple[int, list[tuple[str, int | None, int]],
                                                                              Path]:
    """(number of classes, [(path, frames or None, label)], where) of a videofolder split. With a
    list file (<root>/train.csv or .txt), both splits are list files and the classes are train's
    largest label + 1; otherwise both are class folders, labelled by train/'s sorted class folders."""
    root = videofolder_root(name, data_root)
    train_list = video_list_file(root, "train")
    if train_list is not None:
        where = video_list_file(root, split)
        if where is None:
            raise ConfigError("data.name", f"{name}: {root} has {train_list.name} but no {split}.csv or {split}.txt; "
                                           "expected a list file per split")
        classes = 1 + max(label for _, _, label in read_video_list(name, train_list))
        samples = [(str(root / p), frames, label) for p, frames, label in read_video_list(name, where)]
        bad = next((s for s in samples if s[2] >= classes), None)
        if bad is not None:
            raise _bad_file(name, where, f"gives {bad[0]} label {bad[2]}; expected labels 0..{classes - 1}, those of "
                                         f"{train_list.name}")
        return classes, samples, where
    where = root / split
    if not where.is_dir():
        raise ConfigError("data.name", f"{name}: no {split}/ folder in {root}; expected train/ and {split}/ class "
                                       "folders of clips")
    classes = class_folders(root / "train")
    index = {cls: i for i, cls in enumerate(classes)}
    folder_classes, clips = list_split(where, extensions=VIDEO_EXTENSIONS)
    strange = [cls for cls in folder_classes if cls not in index]
    if strange:
        raise _bad_file(name, where / strange[0], "is a class folder that train/ lacks; expected only classes of "
                                                  "train/ (labels are the sorted positions of train/'s class folders)")
    return len(classes), [(str(where / path), None, index[cls]) for cls, path, _ in clips], where


def clip_first_file(path: str, frames: int | None) -> Path:
    """The file a clip starts with: the video file, or a frames folder's first frame."""
    return Path(path) if frames is None else Path(path) / FRAME_TEMPLATE.format(FRAME_START)


def check_videofolder(name: str, data_root: str | None) -> None:
    """Both splits list at least one clip; every class folder of train/ holds one; val's labels are
    train's; the first file of up to 8 clips spread over each split exists (nothing is decoded)."""
    for split in ("train", dataset_entry(name).test_split):
        _, samples, where = videofolder_samples(name, data_root, split)
        if not samples:
            raise _bad_file(name, where, f"holds no clip; expected files ending in {', '.join(VIDEO_EXTENSIONS)} in "
                                         "its class folders")
        if split == "train" and where.is_dir():
            empty = sorted(set(class_folders(where)) - {Path(p).relative_to(where).parts[0] for p, _, _ in samples})
            if empty:
                raise _bad_file(name, where / empty[0], f"holds no clip; expected at least one file ending in "
                                                        f"{', '.join(VIDEO_EXTENSIONS)} in every class folder")
        n, k = len(samples), min(8, len(samples))
        for i in sorted({round(j * (n - 1) / (k - 1)) for j in range(k)} if k > 1 else {0}):
            first = clip_first_file(samples[i][0], samples[i][1])
            if not first.is_file():
                what = "a video file" if samples[i][1] is None else f"a frames folder's first frame, {first.name}"
                raise _bad_file(name, first, f"is missing (a clip of {where}); expected {what}")


def count_videofolder(name: str, data_root: str | None, split: str) -> tuple[int, Path]:
    """The clips of a split (one listing of its folder, or its list file's lines)."""
    _, samples, where = videofolder_samples(name, data_root, split)
    return len(samples), where
