"""Block masking is BEiT's (issue 15 item 2): BEiT's smallest block scaled to the grid, and a
top-up to the exact count that grows the blocks, so the masks keep the pieces (4-connected
regions) per mask of BEiT's own generator; `fill: random` with `min_patches: 4` keeps the old masks."""
import functools
import hashlib
import json

import numpy as np
import pytest
import torch

from bench import masking
from bench.cli import main
from bench.core.errors import ConfigError
from bench.masking import block
from bench.masking.block import BlockShape, _block_rounds_numpy
from bench.masking.counts import grow_to_count_numpy, grow_to_count_torch
from bench.masking.reference import reference_block, reference_block_rounds
from bench.masking.tools import label_regions, mask_stats

OLD = {"min_patches": 4, "fill": "random"}  # the defaults before BEiT's


def make(batch, grid, ratio, seed=0, device="cpu", **params):
    resolved = masking.resolve_params("block", params, ratio, grid)
    return masking.generate("block", batch, grid, ratio, resolved, torch.Generator(device).manual_seed(seed), device)


def pieces(masks, grid):
    stats = mask_stats(masks, grid)
    return stats["regions_mean"], stats["single_patch_regions_mean"]


# ----------------------------------------------------------------------------- parameters
def test_the_default_min_patches_is_beits_16_of_196_scaled_to_the_grid():
    assert masking.resolve_params("block", {}, 0.75, (14, 14))["min_patches"] == 16
    assert masking.resolve_params("block", {}, 0.75, (8, 8))["min_patches"] == 5   # round(16 * 64 / 196)
    assert masking.resolve_params("block", {}, 0.5, (2, 2))["min_patches"] == 1    # at least 1
    assert masking.resolve_params("block", {"min_patches": 4}, 0.75, (14, 14))["min_patches"] == 4  # given: kept
    resolved = masking.resolve_params("block", {}, 0.75, (8, 8))
    assert resolved["fill"] == "blocks" and masking.resolve_params("block", resolved, 0.75, (8, 8)) == resolved
    # inside the composed strategies too: the resolved config shows the number
    assert masking.resolve_params("tube", {"spatial": "block"}, 0.75, (8, 8))["spatial_params"]["min_patches"] == 5
    assert masking.resolve_params("multi", {}, 0.75, (14, 14))["params"]["block"]["min_patches"] == 16


def test_a_bad_fill_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"masking.params.fill: 'holes' is out of range; allowed: blocks or random$"):
        masking.resolve_params("block", {"fill": "holes"}, 0.75, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.params.fill: 1 has the wrong type; allowed: str"):
        masking.resolve_params("block", {"fill": 1}, 0.75, (8, 8))


# ----------------------------------------------------------------------------- counts and paths
@pytest.mark.parametrize("fill", ["blocks", "random"])
@pytest.mark.parametrize("grid,ratio", [((14, 14), 75 / 196), ((14, 14), 0.75), ((8, 8), 0.75), ((8, 8), 0.05),
                                        ((3, 5), 0.9), ((6, 20), 0.6)])  # 6x20: wider than the bit rows, torch
def test_every_mask_has_exactly_the_count(grid, ratio, fill):
    mask = make(256, grid, ratio, fill=fill)
    assert (mask.sum(1) == masking.num_masked(grid[0] * grid[1], ratio)).all()
    assert torch.equal(mask, make(256, grid, ratio, fill=fill))  # same seed, same masks
    reference = reference_block(grid, ratio, {"fill": fill}, np.random.default_rng(0))
    assert reference.sum() == masking.num_masked(grid[0] * grid[1], ratio)


def test_numpy_and_torch_growth_agree_on_the_same_uniforms():
    # rows from BEiT's rounds (often short), plus empty rows (no frontier: a random seed patch first)
    grid, ratio, batch = (14, 14), 0.75, 64
    params = masking.resolve_params("block", {}, ratio, grid)
    shape = BlockShape.from_params(params, masking.num_masked(196, ratio))
    rng = np.random.default_rng(0)
    rounds = _block_rounds_numpy(batch, grid, shape, lambda ids: rng.random((4, len(ids), 10), dtype=np.float32))
    rounds[:4] = False
    table = rng.random((40, batch, 196), dtype=np.float32)
    calls = iter(range(40))
    grown = grow_to_count_numpy(rounds, grid, shape.target, lambda n: table[next(calls), :n])
    calls = iter(range(40))
    grown_torch = grow_to_count_torch(torch.from_numpy(rounds), grid, shape.target,
                                      lambda n: torch.from_numpy(table[next(calls), :n]))
    assert torch.equal(torch.from_numpy(grown), grown_torch)
    assert (grown.sum(1) == shape.target).all() and (grown | ~rounds).all()  # kept every block, added the rest


def test_growing_never_adds_a_region():
    rng = np.random.default_rng(1)
    before = torch.from_numpy(rng.random((200, 100)) < 0.1)  # scattered pieces of 10x10 masks
    grown = torch.from_numpy(grow_to_count_numpy(before.numpy(), (10, 10), 60,
                                                 lambda n: rng.random((n, 100), dtype=np.float32)))
    assert (grown.sum(1) == 60).all() and (grown | ~before).all()
    index = torch.arange(1, 101)
    regions_before = (label_regions(before, (10, 10)) == index).sum(1)
    regions_after = (label_regions(grown, (10, 10)) == index).sum(1)
    assert (regions_after <= regions_before).all()


# ----------------------------------------------------------------------------- BEiT's pieces per mask
N = 2000  # masks per side: the means' standard errors are about 0.015, a tenth of the tolerance


@functools.lru_cache(maxsize=None)
def beit_pieces(grid, ratio):
    """Pieces and single-patch pieces per mask of BEiT's own generator (no top-up), N masks, seed 0."""
    params = masking.resolve_params("block", {}, ratio, grid)
    rng = np.random.default_rng(0)
    beit = torch.from_numpy(np.stack([reference_block_rounds(grid, ratio, params, rng).ravel() for _ in range(N)]))
    assert (beit.sum(1) < masking.num_masked(grid[0] * grid[1], ratio)).any()  # they fall short: something to top up
    return pieces(beit, grid)


@pytest.mark.parametrize("grid,ratio", [((14, 14), 75 / 196), ((14, 14), 0.75), ((8, 8), 0.75)])
def test_pieces_per_mask_are_beits_before_its_top_up(grid, ratio):
    assert masking.num_masked(196, 75 / 196) == 75
    beit_pieces_mean, beit_single = beit_pieces(grid, ratio)
    masks = make(N, grid, ratio, seed=1)
    assert (masks.sum(1) == masking.num_masked(grid[0] * grid[1], ratio)).all()
    ours_pieces, ours_single = pieces(masks, grid)
    assert abs(ours_pieces - beit_pieces_mean) < 0.1, (ours_pieces, beit_pieces_mean)
    assert abs(ours_single - beit_single) < 0.1, (ours_single, beit_single)


def test_the_torch_path_has_beits_pieces_too(monkeypatch):
    # the rounds and the growth in torch (other devices, grids wider than the bit rows), here on the CPU
    monkeypatch.setattr(block, "MAX_BIT_WIDTH", 0)
    grid, ratio = (14, 14), 75 / 196
    masks = make(N, grid, ratio, seed=1)
    assert (masks.sum(1) == 75).all() and torch.equal(masks, make(N, grid, ratio, seed=1))
    ours_pieces, ours_single = pieces(masks, grid)
    beit_pieces_mean, beit_single = beit_pieces(grid, ratio)
    assert abs(ours_pieces - beit_pieces_mean) < 0.1 and abs(ours_single - beit_single) < 0.1


def test_the_old_defaults_scatter_pieces_beit_does_not_have():
    # issue 15 item 2 (a) and (b), at BEiT's 75 of 196: min 4 makes more pieces, the random top-up single patches
    grid, ratio = (14, 14), 75 / 196
    beit_pieces_mean, beit_single = beit_pieces(grid, ratio)
    assert pieces(make(500, grid, ratio, **OLD), grid)[0] > beit_pieces_mean + 0.5
    assert pieces(make(500, grid, ratio, fill="random"), grid)[1] > beit_single + 0.2


def test_the_reference_grows_like_the_batched_code():
    # the per-sample reference: BEiT's rounds, then the same growth (frontier patches at random)
    grid, ratio = (14, 14), 75 / 196
    params = masking.resolve_params("block", {}, ratio, grid)
    rng = np.random.default_rng(2)
    masks = torch.from_numpy(np.stack([reference_block(grid, ratio, params, rng) for _ in range(500)]))
    assert (masks.sum(1) == 75).all()
    ours_pieces, ours_single = pieces(masks, grid)
    assert abs(ours_pieces - beit_pieces(grid, ratio)[0]) < 0.15 and ours_single < 0.1


# ----------------------------------------------------------------------------- the old masks
def digest(mask: torch.Tensor) -> str:
    return hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("grid,ratio,expected", [
    ((14, 14), 0.75, "492ac95c8ed6fcc5"), ((14, 14), 75 / 196, "ff8d2945eb865614"),
    ((8, 8), 0.5, "b9fdff4ce294f3dc"), ((6, 20), 0.6, "4d90b7a134f3fa7b")])  # 6x20: the torch path
def test_fill_random_with_min_patches_4_gives_the_old_masks(grid, ratio, expected):
    # pinned from the code before BEiT's defaults (64 masks, seed 0)
    assert digest(make(64, grid, ratio, **OLD)) == expected


# ----------------------------------------------------------------------------- the command
def test_masks_stats_show_pieces_and_single_patch_pieces_per_mask(capsys):
    assert main(["masks", "--strategy", "block", "--ratio", "0.75", "--grid", "8", "--batch", "64", "--stats"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["regions_mean"] >= 1 and 0 <= row["single_patch_regions_mean"] < row["regions_mean"]
    single = torch.zeros(2, 16, dtype=torch.bool)
    single[0, [0, 2, 5]] = True   # 0 and 5 alone, 2 alone: 3 single-patch pieces
    single[1, [0, 1, 15]] = True  # a pair and one alone
    stats = mask_stats(single, (4, 4))
    assert stats["regions_mean"] == 2.5 and stats["single_patch_regions_mean"] == 2.0
