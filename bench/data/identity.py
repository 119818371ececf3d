"""What data a run reads, as a value: `identify(data_cfg, data_root)`. Imports no torch (nor numpy).

A dataset's identity is a dict, cheap to compute (no image is decoded; a few hundred KiB are
read, plus one listing of an ImageFolder tree):

    dataset   the registered name
    files     (IDX, pickle datasets) one entry per file the loader reads, sorted by name:
              {"name": file name, "bytes": its size, "sample_sha256": SHA-256 of its first, middle
              and last SAMPLE_BYTES (of all of it when smaller than three of those)}
    splits    (imagefolder; a videofolder of class folders: clips for images) per split folder
              (train, val): {"classes", "images", "listing_sha256":
              SHA-256 of every image's path relative to the split folder and its size, one sorted
              "path<TAB>bytes" line each, "sample_sha256": SHA-256 of the first SAMPLE_BYTES of
              FOLDER_SAMPLE_IMAGES images spread evenly over the listing}
    generator (synthetic) {"name", "version"}: generated data is what its generator makes;
              (moving_fashion_mnist) {"name", "version", "params"}, beside the `files` it draws from
    lists     (videofolder with list files) per split: {"list": the list file's `files` entry,
              "sample_sha256": SHA-256 of the first SAMPLE_BYTES of the first file of
              FOLDER_SAMPLE_IMAGES clips spread evenly over the list}
    limits    {"train": data.train_limit, "test": data.test_limit}
    subset    None without limits; with one, the rule that draws the subset (SUBSET_RULE)
    digest    12 hex digits of the SHA-256 of all of the above (bench.core.hashing.digest)

Names are relative: the same files in another folder have the same identity; other files
(another size, other bytes in a sample, another image list) have another. The config key
`data.identity` holds the digest; bench.study.run_ids leaves it out of the run id when it is null
or the dataset's registered `default_identity` (Debian's Fashion-MNIST without limits), so only
runs on other data, or on a subset, get new ids.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bench.core.errors import ConfigError
from bench.core.hashing import digest
from bench.data.files import list_split

SAMPLE_BYTES = 64 * 1024
FOLDER_SAMPLE_IMAGES = 32
# How a limit draws its subset (bench.data.subset): part of every limited run's identity, so
# changing the rule (bump its version) gives limited runs new ids and never reuses their results.
SUBSET_SEED = 20240601
SUBSET_RULE = {"rule": "class-stratified", "share": "equal, remainder to the first classes", "seed": SUBSET_SEED,
               "version": 1}


def _one_line(err: BaseException) -> str:
    return " ".join(str(getattr(err, "strerror", None) or err).split()) or type(err).__name__


def file_sample(path: Path, name: str) -> dict:
    """{"name", "bytes", "sample_sha256"} of one file; a one-line ConfigError when it cannot be read."""
    try:
        size = path.stat().st_size
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            if size <= 3 * SAMPLE_BYTES:
                sha.update(f.read())
            else:
                for offset in (0, (size - SAMPLE_BYTES) // 2, size - SAMPLE_BYTES):
                    f.seek(offset)
                    sha.update(f.read(SAMPLE_BYTES))
    except OSError as err:
        raise ConfigError("data.identity", f"cannot be read ({_one_line(err)}); expected a readable file",
                          str(path)) from None
    return {"name": name, "bytes": size, "sample_sha256": sha.hexdigest()}


# ----------------------------------------------------------------------------- ImageFolder trees
# (listed by bench.data.files: class_folders, walk_images, list_split)
def folder_split_identity(folder: Path, extensions: tuple | None = None) -> dict:
    """{"classes", "images", "listing_sha256", "sample_sha256"} of one ImageFolder split (of the
    files ending in `extensions`, images by default)."""
    classes, images = list_split(folder, sizes=True) if extensions is None else \
        list_split(folder, sizes=True, extensions=extensions)
    listing = hashlib.sha256("".join(f"{path}\t{size}\n" for _, path, size in images).encode())
    n, k = len(images), min(FOLDER_SAMPLE_IMAGES, len(images))
    picks = sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else list(range(k))
    sample = hashlib.sha256()
    for i in picks:
        path = images[i][1]
        try:
            with open(folder / path, "rb") as f:
                head = f.read(SAMPLE_BYTES)
        except OSError as err:
            raise ConfigError("imagefolder", f"cannot be read ({_one_line(err)}); expected a readable image",
                              str(folder / path)) from None
        sample.update(path.encode() + b"\0" + hashlib.sha256(head).digest())
    return {"classes": len(classes), "images": n, "listing_sha256": listing.hexdigest(),
            "sample_sha256": sample.hexdigest()}


# ----------------------------------------------------------------------------- per dataset
# Each registered as the entry's `identify` ("module:function"), called as (name, data_root) and
# returning (the folder read or None, the identity's content without limits, subset and digest).
def identify_fashion_mnist(name: str, data_root: str | None) -> tuple[Path, dict]:
    from bench.data import find_root
    from bench.data.files import idx_file

    files, first = [], None
    for prefix in ("train", "t10k"):
        folder = find_root(name, data_root, f"{prefix}-images-idx3-ubyte")
        first = first or folder
        for kind in ("images-idx3", "labels-idx1"):
            path = idx_file(folder, f"{prefix}-{kind}-ubyte")
            files.append(file_sample(path, path.name))
    return first, {"files": sorted(files, key=lambda f: f["name"])}


def identify_cifar(name: str, data_root: str | None) -> tuple[Path, dict]:
    from bench.data import find_root
    from bench.data.files import CIFAR_FILES

    folder = find_root(name, data_root, CIFAR_FILES[name]["train"][0])
    files = [file_sample(folder / file, file) for file in CIFAR_FILES[name]["train"] + CIFAR_FILES[name]["test"]]
    return folder, {"files": sorted(files, key=lambda f: f["name"])}


def identify_imagefolder(name: str, data_root: str | None) -> tuple[Path, dict]:
    from bench.data import dataset_entry
    from bench.data.files import imagefolder_split

    splits, root = {}, None
    for split in ("train", dataset_entry(name).test_split):
        folder = imagefolder_split(name, data_root, split)
        root = root or folder.parent
        splits[split] = folder_split_identity(folder)
    return root, {"splits": splits}


SYNTHETIC_VERSION = 1  # bump when bench.data.datasets.make_synthetic makes other images


def identify_synthetic(name: str, data_root: str | None) -> tuple[None, dict]:
    return None, {"generator": {"name": "bench.data.datasets:make_synthetic", "version": SYNTHETIC_VERSION}}


MOVING_FASHION_MNIST_VERSION = 1  # bump when bench.data.video.make_moving_fashion_mnist makes other clips


def identify_moving_fashion_mnist(name: str, data_root: str | None) -> tuple[Path, dict]:
    """The Fashion-MNIST files the clips are drawn from, and the generator that draws them."""
    from bench.data.files import MOVING_FASHION_MNIST

    folder, content = identify_fashion_mnist(name, data_root)
    generator = {"name": "bench.data.video:make_moving_fashion_mnist", "version": MOVING_FASHION_MNIST_VERSION,
                 "params": dict(MOVING_FASHION_MNIST)}
    return folder, {**content, "generator": generator}


def identify_videofolder(name: str, data_root: str | None) -> tuple[Path, dict]:
    """Class folders: like an ImageFolder's splits, of clips. List files: each list file, and a
    sample of the clips it lists (the first bytes of their first file)."""
    from bench.data import dataset_entry
    from bench.data.files import (VIDEO_EXTENSIONS, clip_first_file, video_list_file, videofolder_root,
                                  videofolder_samples)

    root = videofolder_root(name, data_root)
    splits = ("train", dataset_entry(name).test_split)
    if video_list_file(root, "train") is None:
        return root, {"splits": {split: folder_split_identity(root / split, VIDEO_EXTENSIONS) for split in splits}}
    lists = {}
    for split in splits:
        _, samples, where = videofolder_samples(name, data_root, split)
        n, k = len(samples), min(FOLDER_SAMPLE_IMAGES, len(samples))
        sample = hashlib.sha256()
        for i in sorted({round(j * (n - 1) / (k - 1)) for j in range(k)}) if k > 1 else range(k):
            first = clip_first_file(*samples[i][:2])
            try:
                with open(first, "rb") as f:
                    head = f.read(SAMPLE_BYTES)
            except OSError as err:
                raise ConfigError(name, f"cannot be read ({_one_line(err)}); expected a clip's first file",
                                  str(first)) from None
            sample.update(os.path.relpath(first, root).encode() + b"\0" + hashlib.sha256(head).digest())
        lists[split] = {"list": file_sample(where, where.name), "sample_sha256": sample.hexdigest()}
    return root, {"lists": lists}


# ----------------------------------------------------------------------------- the identity
def identify_read(data_cfg: dict, data_root: str | None) -> tuple[dict, str | None]:
    """(the identity of the data `data_cfg` describes, read where a launch with `data_root` reads
    it; the folder it is read from, None for generated data). A one-line ConfigError when the data
    cannot be found or read."""
    from bench.core import registry
    from bench.data import dataset_entry

    name = data_cfg["name"]
    entry = dataset_entry(name)
    if not entry.identify:
        raise ConfigError("data.name", f"{name} has no identify function registered")
    folder, content = registry.load(entry.identify)(name, data_root)
    limits = {"train": data_cfg.get("train_limit"), "test": data_cfg.get("test_limit")}
    identity = {"dataset": name, **content, "limits": limits,
                "subset": dict(SUBSET_RULE) if any(v is not None for v in limits.values()) else None}
    identity["digest"] = digest(identity)
    return identity, (str(Path(folder).resolve()) if folder is not None else None)
