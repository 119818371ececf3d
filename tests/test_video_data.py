"""Video data: clips B×C×T×H×W from a videofolder (class folders of .mp4, or VideoMAE's list files
of frames folders) at the right frames, Moving Fashion-MNIST generated deterministically with a
label that only motion carries, and augmentation that treats every frame of a clip alike."""
import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from bench.core.errors import ConfigError
from bench.data import DEBIAN_DATASETS, check_data, create_dataset, identify
from bench.data.augment import augment, normalize
from bench.data.video import make_moving_fashion_mnist, write_clip

HAS_FASHION = (DEBIAN_DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
RAMP = 20  # frame i of a written clip has green 20·i: its frame number reads back through the codec
FRAMES = 12


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)


def clip_frames(label: int, n: int = FRAMES, size: int = 32) -> np.ndarray:
    """T×H×W×3 frames: red 80·label (the class), green 20·frame (the frame number), blue 0."""
    frames = np.zeros((n, size, size, 3), dtype=np.uint8)
    frames[..., 0] = 80 * label
    frames[..., 1] = RAMP * np.arange(n)[:, None, None]
    return frames


def read_back(clips: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(class, frame number) of each frame of uint8 clips B×3×T×H×W, from its mean colour."""
    mean = clips.double().mean(dim=(3, 4))
    return (mean[:, 0] / 80).round().numpy(), (mean[:, 1] / RAMP).round().numpy()


def write_class_tree(root, clips_per_class: int = 2, classes: int = 3) -> None:
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for k in range(clips_per_class):
                write_clip(root / split / f"class{c}" / f"clip{k}.mp4", clip_frames(c))


def all_batches(data, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(data.batches(4, **kw))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_videofolder_class_folders_read_strided_clips(tmp_path):
    write_class_tree(tmp_path)
    check_data("videofolder", str(tmp_path), {"train": 6, "test": 6})
    cfg = {"name": "videofolder", "img_size": 28, "frames": 4, "frame_stride": 2}
    test = create_dataset(cfg, "test", str(tmp_path))
    assert (len(test), test.frames, test.size, test.channels, test.num_classes) == (6, 4, 32, 3, 3)
    clips, labels = all_batches(test, shuffle=False)
    assert clips.shape == (6, 3, 4, 32, 32) and clips.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    cls, frame = read_back(clips)
    assert (cls == labels[:, None].numpy()).all()
    assert (frame == [2, 4, 6, 8]).all()  # the centre: 12 frames, a span of 4×2, start (12 - 8) // 2
    # training passes start anywhere that fits, drawn from (seed, epoch, clip) only
    train = create_dataset(cfg, "train", str(tmp_path))
    train.workers = 0
    first, labels = all_batches(train, shuffle=True, seed=3, epoch=1)
    again, _ = all_batches(train, shuffle=True, seed=3, epoch=1)
    assert torch.equal(first, again)
    cls, frame = read_back(first)
    assert (cls == labels[:, None].numpy()).all()
    assert (np.diff(frame, axis=1) == 2).all() and 0 <= frame.min() and frame[:, 0].max() <= 4
    starts = {tuple(read_back(all_batches(train, shuffle=True, seed=3, epoch=e)[0])[1][:, 0]) for e in range(4)}
    assert len(starts) > 1
    # a clip shorter than T·τ starts at 0 and repeats its last frame
    long = create_dataset({**cfg, "frames": 8}, "test", str(tmp_path))
    assert (read_back(next(long.batches(2, shuffle=False))[0])[1] == [0, 2, 4, 6, 8, 10, 11, 11]).all()


def test_videofolder_list_files_of_frames_folders_and_videos(tmp_path):
    from PIL import Image

    lines = {"train": [], "val": []}
    for split in lines:
        for c in range(2):
            folder = tmp_path / "frames" / split / f"clip{c}"
            folder.mkdir(parents=True)
            for i, frame in enumerate(clip_frames(c, n=10, size=40)):
                Image.fromarray(frame).save(folder / f"img_{i + 1:05d}.jpg", quality=95)
            lines[split].append(f"frames/{split}/clip{c} 10 {c}")
        write_clip(tmp_path / f"{split}.mp4", clip_frames(2))
        lines[split].append(f"{split}.mp4 2")
        (tmp_path / f"{split}.csv").write_text("\n".join(lines[split]) + "\n")
    check_data("videofolder", str(tmp_path))
    test = create_dataset({"name": "videofolder", "img_size": 16, "frames": 3, "frame_stride": 3}, "test",
                          str(tmp_path))
    assert (len(test), test.num_classes, test.size) == (3, 3, 18)
    clips, labels = next(test.batches(3, shuffle=False))
    assert clips.shape == (3, 3, 3, 18, 18) and labels.tolist() == [0, 1, 2]
    cls, frame = read_back(clips)
    assert (cls == [[0] * 3, [1] * 3, [2] * 3]).all()
    assert (frame[:2] == [0, 3, 6]).all() and (frame[2] == [1, 4, 7]).all()  # centres of 10 and 12 frames
    assert identify({"name": "videofolder"}, str(tmp_path))["lists"]["val"]["list"]["name"] == "val.csv"
    (tmp_path / "val.csv").write_text("frames/val/clip0 30 0\n")  # says 30 frames, holds 10
    short = create_dataset({"name": "videofolder", "img_size": 16, "frames": 3, "frame_stride": 2}, "test",
                           str(tmp_path))
    short.workers = 0
    with pytest.raises(ConfigError, match=r"clip0/img_00013\.jpg: videofolder: is not a readable frame \(.*\); "
                                          r"expected 30 frames img_00001\.jpg, \.\.\. in "):
        list(short.batches(1, shuffle=False))


def test_videofolder_errors_are_one_line_naming_the_file(tmp_path):
    write_class_tree(tmp_path, clips_per_class=1, classes=2)
    before = identify({"name": "videofolder"}, str(tmp_path))["digest"]
    bad = tmp_path / "val" / "class1" / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 20)
    assert identify({"name": "videofolder"}, str(tmp_path))["digest"] != before
    check_data("videofolder", str(tmp_path))  # the check decodes nothing: the run finds it
    test = create_dataset({"name": "videofolder", "img_size": 28, "frames": 2}, "test", str(tmp_path))
    test.workers = 0
    with pytest.raises(ConfigError, match=rf"^{bad}: videofolder: cannot be decoded \(.*\); expected a video"):
        list(test.batches(4, shuffle=False))
    (tmp_path / "train" / "class2").mkdir()
    with pytest.raises(ConfigError, match=r"class2: videofolder: holds no clip; expected at least one file ending"):
        check_data("videofolder", str(tmp_path))
    (tmp_path / "train.csv").write_text("a.mp4 0\nb.mp4 one\n")
    with pytest.raises(ConfigError, match=r"train.csv:2: videofolder: line 'b.mp4 one' is not a clip; expected"):
        check_data("videofolder", str(tmp_path))


def test_generated_clips_written_as_a_videofolder_read_back(tmp_path):
    from bench.data.video import write_videofolder

    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    clips, labels = make_moving_fashion_mnist(images, 8, 0)
    for split in ("train", "val"):
        write_videofolder(tmp_path, split, clips, labels)
    check_data("videofolder", str(tmp_path))
    data = create_dataset({"name": "videofolder", "img_size": 28, "frames": 16}, "test", str(tmp_path))
    back, read_labels = next(data.batches(8, shuffle=False))
    order = np.argsort(labels, kind="stable")  # class folders, then clip names
    assert back.shape == (8, 3, 16, 32, 32) and (read_labels.numpy() == labels[order]).all()
    error = (back.float().mean(1) - torch.from_numpy(clips[order][:, 0]).float()).abs().mean()
    assert error < 4  # of 255: the codec's loss (~0.7), not another frame (one frame off: ~14)


def test_frames_are_required_for_clips_and_refused_for_images(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.frames: null is not allowed for videofolder, a video dataset"):
        create_dataset({"name": "videofolder", "img_size": 32}, "test", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^data\.frames: 4 is not allowed for synthetic, an image dataset"):
        create_dataset({"name": "synthetic", "img_size": 32, "frames": 4}, "test")


def write_fake_fashion(folder, train_value: int, test_value: int, n: int = 40) -> None:
    for prefix, value in (("train", train_value), ("t10k", test_value)):
        for kind, array in (("images-idx3", np.full((n, 28, 28), value)), ("labels-idx1", np.arange(n) % 10)):
            data = np.asarray(array, dtype=np.uint8)
            header = struct.pack(">HBB", 0, 8, data.ndim) + struct.pack(">" + "I" * data.ndim, *data.shape)
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + data.tobytes())


def test_moving_fashion_mnist_draws_train_and_test_from_their_own_files(tmp_path):
    write_fake_fashion(tmp_path, 255, 100)
    code = (f"import sys, bench.data; bench.data.check_data('moving_fashion_mnist', {str(tmp_path)!r}, "
            "{'train': 10000, 'test': 2000}); bench.data.identify({'name': 'moving_fashion_mnist'}, "
            f"{str(tmp_path)!r}); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    cfg = {"name": "moving_fashion_mnist", "img_size": 32, "frames": 2, "frame_stride": 8,
           "train_limit": 80, "test_limit": 80}
    train, test = create_dataset(cfg, "train", str(tmp_path)), create_dataset(cfg, "test", str(tmp_path))
    assert train.images.shape == (80, 1, 2, 32, 32) and train.frames == 2 and train.num_classes == 8
    assert train.images.max() == 255 and test.images.max() == 100  # each split from its own IDX file
    assert np.bincount(test.labels.numpy()).tolist() == [10] * 8
    assert ((train.images > 0).float().mean(dim=(0, 1, 3, 4)) == 0.25).all()  # a 16 px garment on a 32 px canvas
    with pytest.raises(ConfigError, match=r"^data\.frames: 9 frames at data\.frame_stride 2 span 18 frames, more "
                                          r"than the 16 of moving_fashion_mnist's clips; allowed: data\.frames × "
                                          r"data\.frame_stride at most 16 \(data\.frames at most 8\)"):
        create_dataset({**cfg, "frames": 9, "frame_stride": 2}, "test", str(tmp_path))


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Circular cross-correlation maps of frames N×H×W (translation-invariant), flattened."""
    a, b = a - a.mean(dim=(1, 2), keepdim=True), b - b.mean(dim=(1, 2), keepdim=True)
    corr = torch.fft.irfft2(torch.fft.rfft2(b) * torch.fft.rfft2(a).conj(), s=a.shape[1:])
    return (corr / corr.flatten(1).norm(dim=1)[:, None, None]).flatten(1)


def probe_accuracy(train_x, train_y, test_x, test_y, classes=8, steps=300) -> float:
    """Test accuracy of a multinomial logistic regression (full batch, Adam, weight decay)."""
    torch.manual_seed(0)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    model = torch.nn.Linear(train_x.shape[1], classes)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(train_x), train_y).backward()
        opt.step()
    return (model(test_x).argmax(1) == test_y).float().mean().item()


@needs_fashion
def test_moving_fashion_mnist_is_deterministic_and_only_motion_tells_its_label():
    cfg = {"name": "moving_fashion_mnist", "img_size": 32, "frames": 2, "frame_stride": 2, "train_limit": 4000}
    train, test = create_dataset(cfg, "train"), create_dataset(cfg, "test")
    assert test.images.shape == (2000, 1, 2, 32, 32) and (train.size, train.channels) == (32, 1)
    assert np.bincount(test.labels.numpy()).tolist() == [250] * 8
    images = np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    one, two = make_moving_fashion_mnist(images, 64, 5), make_moving_fashion_mnist(images, 64, 5, frames=[3, 7])
    assert np.array_equal(one[0], make_moving_fashion_mnist(images, 64, 5)[0]) and np.array_equal(one[1], two[1])
    assert np.array_equal(one[0][:, :, [3, 7]], two[0])  # a frame is the same whichever others are rendered

    x, y = train.images.float() / 255, train.labels
    tx, ty = test.images.float() / 255, test.labels
    chance = 1 / 8
    # one frame: pixels, or its (translation-invariant) autocorrelation — at chance; 2000 test clips: σ ≈ 0.74 %
    pixels = probe_accuracy(x[:, 0, 0].flatten(1), y, tx[:, 0, 0].flatten(1), ty)
    auto = probe_accuracy(correlation(x[:, 0, 0], x[:, 0, 0]), y, correlation(tx[:, 0, 0], tx[:, 0, 0]), ty)
    # two frames: their cross-correlation — the same classifier reads the motion
    motion = probe_accuracy(correlation(x[:, 0, 0], x[:, 0, 1]), y, correlation(tx[:, 0, 0], tx[:, 0, 1]), ty)
    print(f"single frame pixels {pixels:.3f}, autocorrelation {auto:.3f}; two frames {motion:.3f}")
    assert pixels < chance + 0.04 and auto < chance + 0.04  # 5σ above chance
    assert motion > 0.6


def test_augment_crops_every_frame_of_a_clip_alike():
    clips = torch.randint(0, 256, (6, 3, 5, 24, 24), dtype=torch.uint8)
    still = clips[:, :, :1].expand(-1, -1, 5, -1, -1)
    for preset in ("none", "crop_fixed", "crop_rand", "crop_color"):
        out = augment(still, preset, 16, torch.Generator().manual_seed(0))
        assert out.shape == (6, 3, 5, 16, 16) and out.is_contiguous()
        assert torch.equal(out, out[:, :, :1].expand_as(out)), preset  # identical frames stay identical
        # each frame as an image, with the same draws: what a batch of images gets
        moving = augment(clips, preset, 16, torch.Generator().manual_seed(0))
        for t in range(5):
            frame = augment(clips[:, :, t], preset, 16, torch.Generator().manual_seed(0))
            assert torch.allclose(moving[:, :, t], frame, atol=1e-6), preset
    x = torch.rand(2, 3, 4, 8, 8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1, 1)
    assert torch.allclose(normalize(x, mean, std), expected)
    assert torch.allclose(normalize(x[:, :, 0], mean, std), expected[:, :, 0])
