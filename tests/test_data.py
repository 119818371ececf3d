"""Datasets: the real Fashion-MNIST files, the generated set, deterministic batches, clear errors."""
import gzip
import struct

import numpy as np
import pytest
import torch

from bench.core.errors import ConfigError
from bench.data import create_dataset, list_augmentations, list_datasets
from bench.data import DEBIAN_DATASETS
from bench.data.datasets import _read_idx, make_synthetic

HAS_FASHION = (DEBIAN_DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(_read_idx(tmp_path / "x.gz"), images)


def test_fashion_mnist_from_a_data_root(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    train = create_dataset({"name": "fashion_mnist", "img_size": 32, "train_limit": 10}, "train", str(tmp_path))
    test = create_dataset({"name": "fashion_mnist", "img_size": 32}, "test", str(tmp_path))
    assert train.images.shape == (10, 1, 28, 28) and train.images.dtype == torch.uint8
    assert len(test) == 5 and train.channels == 1 and train.num_classes == 10


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    train = create_dataset({"name": "fashion_mnist", "img_size": 32}, "train")
    test = create_dataset({"name": "fashion_mnist", "img_size": 32}, "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert abs(train.images.float().mean().item() / 255 - train.mean[0]) < 1e-3


def test_missing_data_is_one_line_naming_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)
    with pytest.raises(ConfigError) as err:
        create_dataset({"name": "cifar10", "img_size": 32}, "train", str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("data.name: cifar10 not found")
    assert str(tmp_path / "nowhere") in msg and "--data-root" in msg


def test_cifar_pickles(tmp_path):
    import pickle
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}, f)
    train = create_dataset({"name": "cifar10", "img_size": 32}, "train", str(tmp_path))
    assert train.images.shape == (20, 3, 32, 32) and len(train.labels) == 20


def test_synthetic_is_deterministic_and_balanced():
    a, la, _ = make_synthetic("train", 200)
    b, lb, _ = make_synthetic("train", 200)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(la).tolist() == [20] * 10


def test_batches_order_depends_only_on_seed_and_epoch():
    data = create_dataset({"name": "synthetic", "img_size": 32, "train_limit": 100}, "train")
    def labels(seed, epoch):
        return torch.cat([y for _, y in data.batches(32, shuffle=True, seed=seed, epoch=epoch, drop_last=True)])
    assert torch.equal(labels(0, 0), labels(0, 0))
    assert not torch.equal(labels(0, 0), labels(0, 1))
    assert len(labels(0, 0)) == 96  # drop_last
    unshuffled = torch.cat([y for _, y in data.batches(32, shuffle=False)])
    assert torch.equal(unshuffled, data.labels)


def test_registries_list_datasets_and_augmentations_and_import_no_torch():
    import subprocess
    import sys
    assert list_datasets() == ("fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic",
                               "moving_fashion_mnist", "videofolder")
    assert list_augmentations() == ("none", "crop_fixed", "crop_rand", "crop_color")
    code = "import sys, bench.data; bench.data.list_datasets(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(ConfigError, match=r"^data\.name: 'mnist' is not allowed; allowed: one of fashion_mnist, "):
        create_dataset({"name": "mnist", "img_size": 32}, "train")


def test_loading_is_cached_and_imagefolder_reads_val_as_its_test_split(tmp_path, monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)
    config = {"name": "synthetic", "img_size": 32, "train_limit": 50}
    assert create_dataset(config, "train") is create_dataset(dict(config), "train")
    with pytest.raises(ConfigError, match=r"^data\.name: imagefolder: no val/ folder under "):
        create_dataset({"name": "imagefolder", "img_size": 32}, "test", str(tmp_path))


def test_each_dataset_says_its_channels_and_the_check_before_a_run_imports_no_torch(tmp_path):
    import subprocess
    import sys
    from bench.data import dataset_entry
    assert {name: dataset_entry(name).channels for name in list_datasets()} == {
        "fashion_mnist": 1, "cifar10": 3, "cifar100": 3, "imagefolder": 3, "synthetic": 3,
        "moving_fashion_mnist": 1, "videofolder": 3}
    for prefix, n in (("train", 3), ("t10k", 2)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.zeros((n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n))
    code = (f"import sys, bench.data; bench.data.check_data('fashion_mnist', {str(tmp_path)!r}); "
            "bench.data.check_data('synthetic', None); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_truncated_idx_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "x.gz"
    write_idx(path, np.zeros((4, 28, 28)))
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:100])
    with pytest.raises(ConfigError) as err:
        _read_idx(path, "fashion_mnist")
    assert str(err.value) == (f"{path}: fashion_mnist: holds 84 bytes of data, not the 3136 its header declares "
                              "(4x28x28): truncated or corrupt; expected an unsigned-byte IDX file")
