"""Video datasets: clips of T = data.frames frames taken every data.frame_stride (τ) frames, held
as uint8 C×T×H×W (batches B×C×T×H×W). Registered in bench.data with `video=True`; augmentation
crops every frame of a clip alike (bench.data.augment).

moving_fashion_mnist — generated in memory, deterministically, from Fashion-MNIST's IDX files
(found as the fashion_mnist entry finds them). Each clip: one garment (a Fashion-MNIST image
downscaled to 16 px) moving at constant velocity on a black 32 px canvas that wraps around (a
torus), for 16 raw frames. The label (8 classes) is the direction of motion only: label k moves
at angle k·45° (0 = right, 2 = up, 4 = left, 6 = down), at a speed uniform in [1, 2] px per frame,
from a start position uniform on the canvas; the garment is drawn independently of the label.
The position of the garment in any one frame is therefore uniform over the canvas whatever the
label, and no single frame carries the label: only motion across frames does. Labels are
balanced (n/8 each, shuffled). Train clips draw from the 60,000 train images (10,000 clips, each
a different image, seed 0); test clips from the 10,000 t10k images (2,000 clips, seed 1): the two
splits share no source image. The parameters are bench.data.files.MOVING_FASHION_MNIST (part of
the data identity: change them, or the generator, and bump MOVING_FASHION_MNIST_VERSION in
bench.data.identity). A split is T frames at stride τ from frame 0 of the 16: T×τ at most 16.
Regenerate one with `make_moving_fashion_mnist(images, n, seed)`, and write it out as a
videofolder of .mp4 clips with `write_videofolder` (for a look, or to test the videofolder path).

videofolder — clips on disk, streamed through DataLoader workers (`loader_workers`), in two
layouts (bench.data.files.videofolder_samples):
    class folders  <root>/train/<class>/<clip>.mp4|webm|avi|mkv|mov and <root>/val/<class>/...
                   (UCF101, HMDB51, Kinetics); labels are the sorted positions of train/'s classes
    list files     <root>/train.csv (or .txt) and <root>/val.csv, VideoMAE's list files, one clip
                   a line: `<video file> <label>` or, for a frames folder (VideoMAE's SSv2),
                   `<frames folder> <number of frames> <label>` with frames img_00001.jpg, ...;
                   paths relative to <root> or absolute. A list file wins over a folder.
Videos are decoded with PyAV. Frames: T at stride τ from a start that is the centre of the clip
(start = (frames - T·τ) // 2), except in shuffled passes over the train split, where the start
is drawn uniformly from the positions that fit, as a function of (seed, epoch, clip) only. A clip
shorter than T·τ frames starts at 0 and repeats its last frame (VideoMAE pads so too). (VideoMAE
samples SSv2 by segments, one frame per T equal parts; here every layout uses the stride τ.)
Frames are resized (shorter side) and centre-cropped to a square of round(img_size·8/7), as
imagefolder's images are; the batched augmentation crops from there. Stats: ImageNet's (VideoMAE
uses them for Kinetics and SSv2). A clip that cannot be read fails the run with one line naming it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.core.errors import ConfigError
from bench.data import dataset_entry, find_root
from bench.data.datasets import ImageSet, _read_idx, batch_order, in_memory
from bench.data.streaming import Unreadable, streamed_batches
from bench.data.files import (FRAME_START, FRAME_TEMPLATE, MOVING_FASHION_MNIST, VIDEO_EXTENSIONS, idx_file,
                              limit_error, videofolder_samples)
from bench.data.shards import WHOLE, Shard, step_rows
from bench.data.subset import stratified_subset


def check_frames(name: str, frames, stride, raw: int | None = None) -> tuple[int, int]:
    """(T, τ) as ints, or a one-line ConfigError on data.frames / data.frame_stride; with `raw` (the
    frames a clip has), T×τ must not exceed it."""
    for key, value in (("data.frames", frames), ("data.frame_stride", stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(key, f"{value!r} is not allowed for {name} (clips); allowed: an integer, at least 1")
    if raw is not None and frames * stride > raw:
        raise ConfigError("data.frames", f"{frames} frames at data.frame_stride {stride} span {frames * stride} "
                                         f"frames, more than the {raw} of {name}'s clips; allowed: data.frames × "
                                         f"data.frame_stride at most {raw} (data.frames at most {raw // stride})")
    return frames, stride


# ----------------------------------------------------------------------------- moving_fashion_mnist
def make_moving_fashion_mnist(images: np.ndarray, n: int, seed: int, frames: list[int] | None = None,
                              params: dict = MOVING_FASHION_MNIST) -> tuple[np.ndarray, np.ndarray]:
    """`n` clips of garments from `images` (uint8 N×H×W, e.g. Fashion-MNIST's) moving on a torus,
    labelled by their direction (the module's docstring): (uint8 n×1×len(frames)×canvas×canvas,
    int64 labels). Each clip takes another image while there are more images than clips (a random
    permutation of them, cycled otherwise). `frames`: which of the raw frames to render (all by
    default); the random draws do not depend on it, so a frame is the same whichever others are
    rendered. Deterministic."""
    size, garment, raw, directions = params["canvas"], params["garment"], params["raw_frames"], params["directions"]
    frames = list(range(raw)) if frames is None else list(frames)
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % directions)[torch.randperm(n, generator=gen)]
    source = torch.randperm(len(images), generator=gen)[torch.arange(n) % len(images)]
    low, high = params["speed"]
    speed = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    start = size * torch.rand(n, 2, generator=gen, dtype=torch.float64)               # (x, y), uniform on the canvas
    angle = labels.double() * (2 * torch.pi / directions)
    velocity = speed[:, None] * torch.stack([angle.cos(), -angle.sin()], dim=1)      # y grows downwards: 2 = up
    chosen = torch.from_numpy(np.asarray(images)[source.numpy()])[:, None].float()  # N×1×H×W
    small = F.interpolate(chosen, size=(garment, garment), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    canvas = torch.zeros(n, size, size, dtype=torch.uint8)
    canvas[:, :garment, :garment] = small[:, 0]
    clips = torch.empty(n, 1, len(frames), size, size, dtype=torch.uint8)
    axis, every = torch.arange(size), torch.arange(n)[:, None, None]
    for j, t in enumerate(frames):
        x, y = ((start + velocity * t).floor().long() % size).unbind(1)              # the garment's top-left corner
        rows, cols = (axis[None] - y[:, None]) % size, (axis[None] - x[:, None]) % size
        clips[:, 0, j] = canvas[every, rows[:, :, None], cols[:, None, :]]
    return clips.numpy(), labels.numpy()


def load_moving_fashion_mnist(name: str, split: str, data_root: str | None, *, limit: int | None, load_size: int,
                              frames: int, frame_stride: int) -> ImageSet:
    frames, stride = check_frames(name, frames, frame_stride, MOVING_FASHION_MNIST["raw_frames"])
    prefix, split = ("train", "train") if split == "train" else ("t10k", "test")
    path = idx_file(find_root(name, data_root, f"{prefix}-images-idx3-ubyte"), f"{prefix}-images-idx3-ubyte")
    images = _read_idx(path, name)
    if images.ndim != 3 or not len(images):
        raise ConfigError(name, f"holds images of shape {images.shape}; expected N x H x W, N at least 1", str(path))
    clips, labels = make_moving_fashion_mnist(images, MOVING_FASHION_MNIST["clips"][split],
                                              MOVING_FASHION_MNIST["seeds"][split], range(0, frames * stride, stride))
    return in_memory(name, clips, labels, MOVING_FASHION_MNIST["directions"], limit, split)


# ----------------------------------------------------------------------------- reading clips
def clip_indices(total: int, frames: int, stride: int, key: int | None = None) -> list[int]:
    """The T frame numbers (0-based) of a clip of `total` frames: every `stride`-th from the centre
    start, or from start `key` mod the number of starts that fit; past the end, the last frame."""
    room = max(0, total - frames * stride)  # the starts that fit: 0..room
    start = room // 2 if key is None else key % (room + 1)
    return [min(start + i * stride, total - 1) for i in range(frames)]


def start_key(seed: int, epoch: int, index: int) -> int:
    """A number drawn from (seed, epoch, clip index) only: the random start of a training clip."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{epoch}:{index}".encode()).digest()[:8], "little")


def video_frames(path: str, frames: int, stride: int, key: int | None) -> list[np.ndarray]:
    """The clip's frames of a video file as H×W×3 uint8 arrays (PyAV). Its frame count is the
    stream's header, or its packets counted when the header has none; frames the header promised
    but the file lacks are its last frame."""
    import av

    with av.open(path) as container:
        total = container.streams.video[0].frames
        if not total:
            total = sum(1 for packet in container.demux(video=0) if packet.size)
    wanted = clip_indices(max(total, 1), frames, stride, key)
    out: list[np.ndarray | None] = [None] * frames
    last = None
    with av.open(path) as container:
        container.streams.video[0].thread_count = 1  # the run's CPUs are its DataLoader workers
        for i, last in enumerate(container.decode(video=0)):
            if i in wanted:
                array = last.to_ndarray(format="rgb24")
                out = [array if w == i else a for w, a in zip(wanted, out)]
            if i >= wanted[-1]:
                break
    if last is None:
        raise ValueError("no video frame decoded")
    return [last.to_ndarray(format="rgb24") if a is None else a for a in out]


def folder_frames(folder: str, total: int, frames: int, stride: int, key: int | None) -> list[np.ndarray]:
    """The clip's frames of a frames folder (img_00001.jpg, ...) as H×W×3 uint8 arrays."""
    from PIL import Image

    out = []
    for i in clip_indices(total, frames, stride, key):
        path = Path(folder) / FRAME_TEMPLATE.format(FRAME_START + i)
        try:
            with Image.open(path) as img:
                out.append(np.asarray(img.convert("RGB")))
        except (OSError, ValueError) as err:
            raise ConfigError("videofolder", f"is not a readable frame ({' '.join(str(err).split())}); expected "
                                             f"{total} frames {FRAME_TEMPLATE.format(FRAME_START)}, ... in {folder}",
                              str(path)) from None
    return out


def read_clip(path: str, total: int | None, frames: int, stride: int, key: int | None, load_size: int) -> torch.Tensor:
    """One clip as uint8 3×T×load_size×load_size: its frames (a video file when `total` is None, else
    a frames folder of `total` frames), shorter side resized to load_size, centre-cropped."""
    from torchvision.transforms.v2 import functional as TF

    arrays = video_frames(path, frames, stride, key) if total is None else folder_frames(path, total, frames,
                                                                                           stride, key)
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"frames of different sizes ({', '.join(sorted({str(a.shape) for a in arrays}))})")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)                      # T×3×H×W
    x = TF.center_crop(TF.resize(x, load_size, antialias=True), [load_size, load_size])
    return x.permute(1, 0, 2, 3).contiguous()


class _Clips(torch.utils.data.Dataset):
    """(path, frames, label) samples read by `read_clip`; a clip that fails is an Unreadable."""

    def __init__(self, samples: list, frames: int, stride: int, load_size: int):
        self.samples, self.frames, self.stride, self.load_size = samples, frames, stride, load_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, tuple[int, int] | None]):
        """item: (sample index, (seed, epoch) of a training pass — its random clip starts — or None)."""
        index, starts = item
        path, total, label = self.samples[index]
        key = None if starts is None else start_key(*starts, index)
        try:
            return read_clip(path, total, self.frames, self.stride, key, self.load_size), label
        except ConfigError as err:
            return Unreadable(err.key, err.detail, err.source)
        except Exception as err:  # PyAV and PIL raise many kinds: the file is what to name
            what = "a video PyAV decodes (" + ", ".join(VIDEO_EXTENSIONS) + ")" if total is None else \
                f"a frames folder of {total} frames {FRAME_TEMPLATE.format(FRAME_START)}, ..."
            return Unreadable("videofolder", f"cannot be decoded ({type(err).__name__}: {' '.join(str(err).split())}"
                                             f"); expected {what}", path)


class VideoFolderSet:
    """Clips on disk (bench.data.files.videofolder_samples), streamed: workers decode T frames at
    stride τ and resize them to `load_size`²; batches are uint8 B×3×T×S×S. `workers`: None follows
    the machine at each pass (`loader_workers`)."""

    channels = 3
    crops_in_loader = False  # whole frames; the clip's crop happens on the device

    def __init__(self, name: str, split: str, samples: list, num_classes: int, load_size: int, frames: int,
                 stride: int, limit: int | None = None, where: Path | str = "", workers: int | None = None):
        if limit is not None:
            if limit > len(samples):
                raise limit_error(name, split, limit, len(samples), where)
            samples = [samples[i] for i in stratified_subset([s[2] for s in samples], limit, num_classes, split)]
        self.name, self.split, self.samples, self.num_classes = name, split, samples, num_classes
        self.load_size, self.frames, self.stride, self.workers = load_size, frames, stride, workers
        self.mean, self.std = dataset_entry(name).stats
        self.labels = torch.tensor([s[2] for s in samples], dtype=torch.int64)
        self._loader: dict[str, torch.utils.data.DataLoader] = {}

    @property
    def size(self) -> int:
        return self.load_size

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0,
                drop_last: bool = False, device="cpu", start: int = 0, shard: Shard = WHOLE,
                augmentation: str = "none"):
        """Batches of (uint8 clips, labels) on `device`, decoded by the loader's workers; with `shard`
        (rank, world), only this rank's share of each (bench.data.shards) is read and decoded.
        `augmentation` is not used here: whole frames, cropped on the device."""
        order = batch_order(len(self), seed, epoch).tolist() if shuffle else list(range(len(self)))
        starts = (seed, epoch) if shuffle and self.split == "train" else None
        steps = [[(i, starts) for i in rows] for rows in step_rows(order, batch_size, drop_last, start, shard)]
        yield from streamed_batches(self._loader, device,
                                    lambda: _Clips(self.samples, self.frames, self.stride, self.load_size),
                                    self.workers, steps)


def load_videofolder(name: str, split: str, data_root: str | None, *, limit: int | None, load_size: int,
                     frames: int, frame_stride: int) -> VideoFolderSet:
    frames, stride = check_frames(name, frames, frame_stride)
    classes, samples, where = videofolder_samples(name, data_root, split)
    return VideoFolderSet(name, "train" if split == "train" else "test", samples, classes, load_size, frames, stride,
                          limit, where)


# ----------------------------------------------------------------------------- writing clips
def write_clip(path: str | Path, frames: np.ndarray, fps: int = 8, codec: str = "mpeg4") -> None:
    """Encode uint8 frames T×H×W×3 (or T×H×W×1, T×H×W grey) as a video file (PyAV); H and W even."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    frames = frames[..., None] if frames.ndim == 3 else frames
    frames = np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 20_000_000  # plenty for small frames: they read back close to what was written
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


def write_videofolder(root: str | Path, split: str, clips: np.ndarray, labels: np.ndarray, fps: int = 8) -> Path:
    """Write clips (uint8 N×C×T×H×W, C 1 or 3) as <root>/<split>/<label>/<index>.mp4: a videofolder
    class tree (class folders are the labels, zero-padded so their sorted order is the labels')."""
    folder = Path(root) / split
    width = len(str(int(np.max(labels)))) if len(labels) else 1
    for i, (clip, label) in enumerate(zip(clips, labels)):
        out = folder / f"{int(label):0{width}d}"
        out.mkdir(parents=True, exist_ok=True)
        write_clip(out / f"{i:06d}.mp4", np.moveaxis(np.asarray(clip), 0, -1), fps)
    return folder
