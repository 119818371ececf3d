"""Data you can trust: a dataset's identity is in the run id and every cache key, an ImageFolder has
one label space, a limit draws a seeded class-stratified subset, data is checked before a launch,
and a file that breaks while a run reads it fails the run with one line naming it."""
import gzip
import json
import shutil
import struct

import numpy as np
import pytest
import torch
import yaml

from bench.core.errors import ConfigError
from bench.data import DEBIAN_DATASETS, check_data, create_dataset, dataset_entry, identify
from bench.data.streaming import ImageFolderSet, loader_workers
from bench.data.subset import class_counts, stratified_subset
from bench.launch.job import run_one
from bench.launch.store import RunFolder
from bench.study.config import resolve
from bench.study.run_ids import run_id
from bench.study.spec import check_data as check_study
from bench.study.spec import load_study
from bench.targets.fit import fit_key

HAS_FASHION = (DEBIAN_DATASETS / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists()

TINY = {  # pre-training only (no evals), one epoch: a run takes about a second
    "data": {"name": "fashion_mnist", "img_size": 16, "augmentation": "none"},
    "model": {"preset": "mae_vit_tiny_patch4", "embed_dim": 32, "depth": 1, "num_heads": 2,
              "decoder_embed_dim": 32, "decoder_depth": 1, "decoder_num_heads": 2},
    "pretrain": {"epochs": 1, "warmup_epochs": 0, "batch_size": 16, "blr": 1.5e-3},
    "evals": {"linear_probe": {"enabled": False}, "finetune": {"enabled": False}},
}
LAUNCH = {"executor": "debug", "threads": 1, "device": "cpu"}


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fashion(root, seed=0, n=(40, 20), sorted_labels=False):
    """A Fashion-MNIST folder of generated images: n training and test images, labels 0..9."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in zip(("train", "t10k"), n):
        labels = np.arange(count) % 10
        labels = np.sort(labels) if sorted_labels else rng.permutation(labels)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tree(root, train=None, val=None, size=(8, 8)):
    """An ImageFolder tree: {class: number of images} per split (PNG files, each a different colour)."""
    from PIL import Image

    for split, classes in (("train", train or {}), ("val", val or {})):
        for c, (cls, n) in enumerate(classes.items()):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", size, (40 * c, 7 * i, 100)).save(root / split / cls / f"{i:03d}.png")
    return root


def spec_file(tmp_path, base, name="s"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base}, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- identity and the caches
def test_other_data_is_another_run_and_another_encoder_and_moved_files_are_the_same(tmp_path):
    a = fashion(tmp_path / "A", seed=0)
    fashion(tmp_path / "B", seed=1)  # other images under the same names
    shutil.copytree(a, tmp_path / "C")  # A's files, in another folder
    path, results = spec_file(tmp_path, TINY), tmp_path / "results"
    studies = {root: load_study(path, {"data_root": str(tmp_path / root)}) for root in "ABC"}
    ids = {root: study.runs[0].run_id for root, study in studies.items()}
    assert ids["A"] != ids["B"] and ids["A"] == ids["C"]
    assert studies["A"].runs[0].config["data"]["identity"] == identify(TINY["data"], str(a))["digest"]
    outs = {}
    for root in "ABC":
        check_study(studies[root])
        outs[root] = run_one(studies[root].runs[0].config, f"study{root}", str(results),
                             {**LAUNCH, "data_root": str(tmp_path / root)})
        assert outs[root]["status"] == "done", outs[root]
    assert len(list((results / "_cache" / "encoders").glob("*.pt"))) == 2  # A's (also C's) and B's
    result_a, result_b, result_c = (outs[r]["result"] for r in "ABC")
    assert result_b["pretrained_by"] == ids["B"] and result_c["pretrained_by"] == ids["A"]  # C reuses A's
    assert result_a["data_root"] == str(a.resolve()) and result_c["data_root"] == str((tmp_path / "C").resolve())
    assert result_a["data_identity"] == result_c["data_identity"] != result_b["data_identity"]
    assert result_a["data_identity"]["digest"] == studies["A"].runs[0].config["data"]["identity"]
    stored = json.loads(RunFolder(results, "studyA", ids["A"]).result_path.read_text())
    assert [f["name"] for f in stored["data_identity"]["files"]] == sorted(p.name for p in a.iterdir())


def test_the_identity_names_files_by_name_size_and_sampled_bytes_and_the_limits(tmp_path):
    a = fashion(tmp_path / "A")
    ident = identify({"name": "fashion_mnist"}, str(a))
    assert set(ident) == {"dataset", "files", "limits", "subset", "digest"} and len(ident["digest"]) == 12
    assert ident["files"][0] == {"name": "t10k-images-idx3-ubyte.gz", "bytes": (a / "t10k-images-idx3-ubyte.gz")
                                 .stat().st_size, "sample_sha256": ident["files"][0]["sample_sha256"]}
    assert ident["subset"] is None and ident["limits"] == {"train": None, "test": None}
    limited = identify({"name": "fashion_mnist", "train_limit": 10}, str(a))
    assert limited["digest"] != ident["digest"] and limited["subset"]["rule"] == "class-stratified"
    raw = bytearray((a / "train-labels-idx1-ubyte.gz").read_bytes())
    raw[-9] ^= 0xFF  # one byte of the file (its gzip CRC): same name, same size
    (a / "train-labels-idx1-ubyte.gz").write_bytes(bytes(raw))
    assert identify({"name": "fashion_mnist"}, str(a))["digest"] != ident["digest"]
    synthetic = identify({"name": "synthetic"}, None)
    assert synthetic["generator"] == {"name": "bench.data.datasets:make_synthetic", "version": 1}
    with pytest.raises(ConfigError, match="cifar10 not found"):
        identify({"name": "cifar10"}, str(tmp_path / "A"))


def test_a_run_whose_files_changed_since_it_was_planned_fails_with_one_line(tmp_path):
    a = fashion(tmp_path / "A")
    study = load_study(spec_file(tmp_path, TINY), {"data_root": str(a)})
    fashion(a, seed=5)  # other files under the same names, after planning
    out = run_one(study.runs[0].config, "s", str(tmp_path / "r"), {**LAUNCH, "data_root": str(a)},
                  raise_on_failure=False)
    assert out["status"] == "failed" and out["phase"] == "setup" and "\n" not in out["error"]
    assert out["error"].startswith(f"ConfigError: data.identity: the data read from {a.resolve()} is ")
    assert "not the " + study.runs[0].config["data"]["identity"] in out["error"]
    last = RunFolder(tmp_path / "r", "s", study.runs[0].run_id).error_path.read_text().splitlines()[-1]
    assert last.startswith("bench.core.errors.ConfigError: data.identity: the data read from")


def test_without_the_data_a_spec_still_loads_unidentified(tmp_path):
    base = {**TINY, "data": {"name": "imagefolder", "img_size": 16}}
    run = load_study(spec_file(tmp_path, base), {"data_root": str(tmp_path / "none")}).runs[0]
    assert run.config["data"]["identity"] is None and run.run_id == run_id(resolve(base))


@pytest.mark.skipif(not HAS_FASHION, reason="Debian's dataset-fashion-mnist is not installed")
def test_debians_fashion_mnist_is_the_registered_default_and_keeps_its_run_ids():
    digest = identify({"name": "fashion_mnist"}, str(DEBIAN_DATASETS))["digest"]
    assert digest == dataset_entry("fashion_mnist").default_identity
    whole = resolve(TINY)
    assert run_id({**whole, "data": {**whole["data"], "identity": digest}}) == run_id(whole)  # ids as before
    limited = resolve({**TINY, "data": {**TINY["data"], "train_limit": 100}})
    limited["data"]["identity"] = identify(limited["data"], None)["digest"]
    assert limited["data"]["identity"] != digest
    assert run_id(limited) != run_id({**limited, "data": {**limited["data"], "identity": None}})


def test_fitted_targets_are_keyed_by_the_data_too():
    cfg = resolve(TINY)
    key = fit_key("pca", {}, cfg, 1)
    assert "identity" not in key["data"]  # not identified: the key targets had before
    other = {**cfg, "data": {**cfg["data"], "identity": "0123456789ab"}}
    assert fit_key("pca", {}, other, 1)["data"]["identity"] == "0123456789ab"
    default = {**cfg, "data": {**cfg["data"], "identity": dataset_entry("fashion_mnist").default_identity}}
    assert fit_key("pca", {}, default, 1) == key


# ----------------------------------------------------------------------------- one label space
def test_imagefolder_labels_come_from_train_and_a_val_split_may_lack_a_class(tmp_path):
    root = tree(tmp_path / "t", train={"ant": 2, "bee": 2, "cow": 2}, val={"ant": 1, "cow": 2})
    check_data("imagefolder", str(root))  # a class missing from val/ is allowed
    test = create_dataset({"name": "imagefolder", "img_size": 16}, "test", str(root))
    assert test.num_classes == 3 and test.labels.tolist() == [0, 2, 2]  # cow is 2, as in train/
    images, labels = next(test.batches(8, shuffle=False))
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 2, 2]  # the eval crop: 18 -> 16


def test_a_class_only_in_val_is_an_error_naming_it(tmp_path):
    root = tree(tmp_path / "t", train={"ant": 1, "bee": 1}, val={"ant": 1, "bee": 1, "cow": 1})
    with pytest.raises(ConfigError) as err:
        check_data("imagefolder", str(root))
    assert str(err.value).startswith(f"{root / 'val'}: imagefolder: has class folder cow that train/ lacks")
    with pytest.raises(ConfigError, match=r"val/cow: imagefolder: has class folder cow that train/ lacks"):
        create_dataset({"name": "imagefolder", "img_size": 16}, "test", str(root))


# ----------------------------------------------------------------------------- limits
def test_a_limit_on_an_imagefolder_draws_every_class_the_same_way_each_time(tmp_path):
    root = tree(tmp_path / "t", train={"ant": 4, "bee": 4, "cow": 4}, val={"ant": 1, "bee": 1, "cow": 1})
    kwargs = dict(split="train", load_size=8, limit=7, classes=["ant", "bee", "cow"])
    first = ImageFolderSet(root / "train", **kwargs)
    assert torch.bincount(first.labels).tolist() == [3, 2, 2]  # 7 = 2 each, the remainder to the first class
    again = ImageFolderSet(root / "train", **kwargs)
    assert again.samples == first.samples
    ten = create_dataset({"name": "imagefolder", "img_size": 16, "train_limit": 10}, "train", str(root))
    assert torch.bincount(ten.labels).tolist() == [4, 3, 3]


def test_a_limit_on_an_in_memory_dataset_is_stratified_not_the_first_n(tmp_path):
    root = fashion(tmp_path / "A", n=(100, 20), sorted_labels=True)  # labels in class order, as the issue's
    train = create_dataset({"name": "fashion_mnist", "img_size": 16, "train_limit": 10}, "train", str(root))
    assert torch.bincount(train.labels, minlength=10).tolist() == [1] * 10  # the first 10 were all class 0
    again = create_dataset({"name": "fashion_mnist", "img_size": 16, "train_limit": 10, "identity": "x"}, "train",
                           str(root))  # read anew (another cache key), drawn the same
    assert again is not train and torch.equal(again.images, train.images)
    synthetic = create_dataset({"name": "synthetic", "img_size": 16, "train_limit": 95}, "train")
    assert sorted(torch.bincount(synthetic.labels).tolist()) == [9] * 5 + [10] * 5
    assert class_counts([1, 5, 5], 7) == [1, 3, 3] and class_counts([0, 2, 9], 20) == [0, 2, 9]
    labels = np.repeat(np.arange(3), [50, 30, 20])
    keep = stratified_subset(labels, 30, 3, "train")
    assert np.bincount(labels[keep]).tolist() == [10, 10, 10] and np.all(np.diff(keep) > 0)
    assert not np.array_equal(keep, stratified_subset(labels, 30, 3, "test"))  # each split its own draw


def test_a_limit_larger_than_its_split_is_an_error_before_and_while_loading(tmp_path):
    root = fashion(tmp_path / "A")
    with pytest.raises(ConfigError, match=r"^data\.test_limit: 21 is more than the 20 images of fashion_mnist's "
                                          r"test split \(in .*t10k-images-idx3-ubyte.gz\); allowed: at most 20"):
        check_data("fashion_mnist", str(root), {"train": 40, "test": 21})
    with pytest.raises(ConfigError, match=r"t10k-images-idx3-ubyte.gz\); allowed: at most 20"):
        create_dataset({"name": "fashion_mnist", "img_size": 16, "test_limit": 21}, "test", str(root))


# ----------------------------------------------------------------------------- reading later
def test_a_corrupt_image_deep_in_a_tree_fails_the_run_with_one_line_naming_it(tmp_path):
    root = tree(tmp_path / "t", train={"ant": 4, "bee": 3}, val={"ant": 1, "bee": 1})  # 8 with bad.png: 2 batches
    deep = root / "train" / "bee" / "more" / "deeper" / "bad.png"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(b"\x89PNG\r\n\x1a\n but not a picture")
    check_data("imagefolder", str(root))  # the look before a launch opens one image per class
    split = ImageFolderSet(root / "train", "train", 8, None, workers=2, classes=["ant", "bee"])
    with pytest.raises(ConfigError) as err:  # from a DataLoader worker, raised again here in one line
        list(split.batches(4, shuffle=False))
    assert str(err.value).startswith(f"{deep}: imagefolder: is not a readable image (")
    base = {**TINY, "data": {"name": "imagefolder", "img_size": 16, "augmentation": "none"}}
    base["pretrain"] = {**TINY["pretrain"], "batch_size": 4}
    study = load_study(spec_file(tmp_path, base), {"data_root": str(root)})
    out = run_one(study.runs[0].config, "s", str(tmp_path / "r"), {**LAUNCH, "threads": 2, "data_root": str(root)},
                  raise_on_failure=False)
    assert out["status"] == "failed" and out["phase"] == "pretrain"
    assert out["error"] == f"ConfigError: {err.value}"  # the launcher's summary: one line
    text = RunFolder(tmp_path / "r", "s", study.runs[0].run_id).error_path.read_text()
    assert text.splitlines()[-1] == f"bench.core.errors.ConfigError: {err.value}" and "worker" not in text


def test_loader_workers_follow_the_cpus_the_run_was_given(monkeypatch):
    assert loader_workers(cpus=1, threads=8) == 0  # one CPU: read in the main process
    assert loader_workers(cpus=2, threads=8) == 2 and loader_workers(cpus=16, threads=4) == 4
    assert loader_workers(cpus=8, threads=1) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        assert loader_workers() == 3
        torch.set_num_threads(2)
        assert loader_workers() == 2
    finally:
        torch.set_num_threads(threads)
