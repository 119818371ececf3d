"""Sharded data under DDP (bench.data.shards): each rank reads, decodes and augments only its share
of the global batch, the shares' union is the single-process batch, and two gloo ranks pre-train
as one process does."""
import copy
import multiprocessing as mp

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data import create_dataset
from bench.data.augment import augment
from bench.data.streaming import ImageFolderSet
from bench.data.shards import share, step_rows
from bench.study.config import resolve
from bench.train import distributed
from bench.train.pretrain import pretrain
from conftest import TINY_BASE


@pytest.mark.parametrize("n, world", [(8, 2), (10, 3), (7, 4)])
def test_the_shares_of_a_batch_are_disjoint_and_make_it_whole(n, world):
    rows = [list(range(n))[share(n, r, world)] for r in range(world)]
    assert sum(rows, []) == list(range(n)) and max(map(len, rows)) - min(map(len, rows)) <= 1
    order = list(np.random.default_rng(0).permutation(23))
    whole = step_rows(order, 5, drop_last=True)
    assert len(whole) == 4 and sum(whole, []) == order[:20]
    per_rank = [step_rows(order, 5, drop_last=True, start=1, shard=(r, world)) for r in range(world)]
    for k in range(3):  # from step 1 on: each step's shares, in rank order, are that step's batch
        assert sum((steps[k] for steps in per_rank), []) == whole[k + 1]
    assert step_rows(order, 5, drop_last=False)[-1] == order[20:]


def test_in_memory_batches_of_every_rank_make_the_single_process_batch():
    data = create_dataset(resolve(copy.deepcopy(TINY_BASE))["data"], "train")
    whole = list(data.batches(64, shuffle=True, seed=3, epoch=1, drop_last=True))
    shards = [list(data.batches(64, shuffle=True, seed=3, epoch=1, drop_last=True, shard=(r, 3))) for r in range(3)]
    for k, (images, labels) in enumerate(whole):
        assert torch.equal(torch.cat([s[k][0] for s in shards]), images)
        assert torch.equal(torch.cat([s[k][1] for s in shards]), labels)
        assert [len(s[k][1]) for s in shards] == [21, 21, 22]


def test_augmenting_a_share_gives_its_rows_of_the_augmented_batch():
    images = torch.randint(0, 256, (10, 3, 20, 20), dtype=torch.uint8)
    for preset in ("crop_rand", "crop_color", "crop_fixed"):
        whole = augment(images, preset, 16, torch.Generator().manual_seed(5))
        for rows in (share(10, 0, 3), share(10, 2, 3)):
            part = augment(images[rows], preset, 16, torch.Generator().manual_seed(5), share=(10, rows))
            assert torch.allclose(part, whole[rows], atol=1e-6), preset


def _folder(root, n_per_class=6):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")


def test_an_imagefolder_rank_decodes_only_its_share_and_keeps_its_workers(tmp_path, monkeypatch):
    _folder(tmp_path)
    folder = ImageFolderSet(tmp_path / "train", "train", 16, None, workers=2)
    whole = list(folder.batches(4, shuffle=True, seed=1, epoch=0, drop_last=True))
    decoded = []
    one = ImageFolderSet(tmp_path / "train", "train", 16, None, workers=0)  # decodes in this process: countable
    import bench.data.streaming as streaming
    real = streaming.load_image
    monkeypatch.setattr(streaming, "load_image", lambda path: decoded.append(path) or real(path))
    rank1 = list(one.batches(4, shuffle=True, seed=1, epoch=0, drop_last=True, shard=(1, 2)))
    assert len(decoded) == 6  # 3 steps x 2 images: half of every batch, nothing else read
    for (images, labels), (part, part_labels) in zip(whole, rank1):
        assert torch.equal(part, images[2:]) and torch.equal(part_labels, labels[2:])
    loader = folder._loader["cpu"]
    list(folder.batches(4, shuffle=True, seed=1, epoch=1, drop_last=True))
    assert folder._loader["cpu"] is loader and loader.persistent_workers  # one loader, workers kept up


def _rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        config = resolve(copy.deepcopy(TINY_BASE))
        model, info = pretrain(config, create_dataset(config["data"], "train"), torch.device("cpu"))
        if rank == 0:
            torch.save({"state": model.state_dict(), "loss": info["final_loss"]}, out)
    finally:
        distributed.shutdown()


def test_two_gloo_ranks_pretrain_as_one_process(tmp_path):
    config = resolve(copy.deepcopy(TINY_BASE))
    torch.set_num_threads(1)
    single, info = pretrain(config, create_dataset(config["data"], "train"), torch.device("cpu"))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "init"), str(tmp_path / "rank0.pt"))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    saved = torch.load(tmp_path / "rank0.pt")
    state, loss = saved["state"], saved["loss"]
    assert loss == pytest.approx(info["final_loss"], rel=1e-4)
    for name, value in single.state_dict().items():  # 8 AdamW steps: the same weights to rounding
        assert torch.allclose(value, state[name], rtol=1e-3, atol=1e-4), name


def test_an_imagefolder_is_cropped_in_the_workers_as_the_official_transforms(tmp_path):
    """Pre-training crops come from the whole image (RandomResizedCrop 0.2-1, bicubic, flip); the eval
    transform is resize 256 + centre crop 224 (here 37 -> 32): ImageNet's, scaled."""
    _folder(tmp_path, n_per_class=4)
    folder = ImageFolderSet(tmp_path / "train", "train", 37, None, workers=0)  # img_size 32: load 37
    assert folder.crops_in_loader and folder.size == 32
    evaluated = next(folder.batches(8, shuffle=False))[0]
    assert evaluated.shape == (8, 3, 32, 32) and evaluated.dtype == torch.uint8
    from torchvision.transforms import InterpolationMode, v2
    image = v2.PILToTensor()(Image.open(folder.samples[0][0]).convert("RGB"))
    expected = v2.CenterCrop(32)(v2.Resize(37, interpolation=InterpolationMode.BICUBIC, antialias=True)(image))
    assert torch.equal(evaluated[0], expected)
    first = next(folder.batches(8, shuffle=True, seed=0, epoch=0, augmentation="crop_rand"))[0]
    again = next(folder.batches(8, shuffle=True, seed=0, epoch=0, augmentation="crop_rand"))[0]
    other = next(folder.batches(8, shuffle=True, seed=0, epoch=1, augmentation="crop_rand"))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)  # a function of (seed, epoch, image)
    shard = next(folder.batches(8, shuffle=True, seed=0, epoch=0, augmentation="crop_rand", shard=(1, 2)))[0]
    assert torch.equal(shard, first[4:])  # a rank decodes its rows with the draws they get in the whole batch
    before = torch.get_rng_state()
    list(folder.batches(8, shuffle=True, seed=0, epoch=0, augmentation="crop_rand"))
    assert torch.equal(torch.get_rng_state(), before)  # decoding in this process leaves its stream alone
    # on the device only what is left: no second crop, crop_color's jitter
    x = augment(first, "crop_rand", 32, torch.Generator().manual_seed(0), cropped=True)
    assert torch.allclose(x, first.float() / 255)
    jittered = augment(first, "crop_color", 32, torch.Generator().manual_seed(0), cropped=True)
    assert jittered.shape == x.shape and not torch.allclose(jittered, x)
