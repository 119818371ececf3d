"""Mask tools: connected regions, evenness, per-sample references vs the batched generators, bench, gallery."""
import json

import numpy as np
import pytest
import torch

from bench import masking
from bench.benchmarks import masks as mask_bench
from bench.masking.reference import REFERENCES, reference_batch, reference_block, reference_grid
from bench.masking import tools as mask_tools

GRID = (14, 14)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: on a busy 2-core machine multi-threaded ops stall (10-100x); one thread is steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def need(name):
    if name not in masking.list_strategies():
        pytest.skip(f"strategy {name!r} is not registered yet")


def make(name, batch, grid=GRID, ratio=0.75, seed=0, **params):
    resolved = masking.resolve_params(name, params, ratio, grid)
    return masking.generate(name, batch, grid, ratio, resolved, torch.Generator().manual_seed(seed))


def from_rows(*rows):
    """One B×L mask per picture, '#' = masked."""
    return torch.tensor([[ch == "#" for ch in "".join(rows)]])


# ----------------------------------------------------------------------------- regions and stats
def test_two_separate_blocks_are_two_regions_of_exact_size():
    mask = from_rows("##....",
                     "##....",
                     "......",
                     "...###",
                     "...###",
                     "...###")
    labels = mask_tools.label_regions(mask, (6, 6))[0]
    sizes = sorted(torch.bincount(labels)[1:][torch.bincount(labels)[1:] > 0].tolist())
    assert sizes == [4, 9]
    assert labels[0] == 1 and labels[3 * 6 + 3] == 3 * 6 + 4  # label = 1 + smallest index in the region
    assert (labels[~mask[0]] == 0).all()
    stats = mask_tools.mask_stats(mask, (6, 6))
    assert stats["regions_mean"] == 2 and stats["region_size_mean"] == 6.5
    assert stats["ratio_mean"] == stats["ratio_min"] == stats["ratio_max"] == 13 / 36


def test_diagonal_neighbours_are_not_connected_and_snakes_are_one_region():
    diagonal = from_rows("#...", ".#..", "..#.", "...#")
    assert mask_tools.mask_stats(diagonal, (4, 4))["regions_mean"] == 4
    snake = from_rows("#####", "....#", "#####", "#....", "#####")  # long path, one region
    stats = mask_tools.mask_stats(snake, (5, 5))
    assert stats["regions_mean"] == 1 and stats["region_size_mean"] == 17


def test_checkerboard_has_one_region_per_masked_patch():
    height, width = 14, 14
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    board = ((rows + cols) % 2 == 0).flatten().unsqueeze(0).repeat(3, 1)
    stats = mask_tools.mask_stats(board, (height, width))
    assert stats["regions_mean"] == height * width / 2 and stats["region_size_mean"] == 1


def test_regions_match_a_flood_fill_on_random_masks():
    def flood_count(mask, height, width):
        seen, regions = set(), 0
        for start in range(height * width):
            if mask[start] and start not in seen:
                regions += 1
                stack = [start]
                seen.add(start)
                while stack:
                    p = stack.pop()
                    r, c = divmod(p, width)
                    for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                        q = rr * width + cc
                        if 0 <= rr < height and 0 <= cc < width and mask[q] and q not in seen:
                            seen.add(q)
                            stack.append(q)
        return regions

    gen = torch.Generator().manual_seed(1)
    for height, width in ((14, 14), (5, 9), (1, 7)):
        masks = torch.rand(64, height * width, generator=gen) < 0.6
        labels = mask_tools.label_regions(masks, (height, width))
        roots = (labels == torch.arange(1, height * width + 1)).sum(1).tolist()
        assert roots == [flood_count(m.tolist(), height, width) for m in masks]


def test_position_evenness_fixed_pattern_is_inf_and_random_is_near_one():
    fixed = from_rows("##..", "##..", "....", "....").repeat(50, 1)
    assert mask_tools.mask_stats(fixed, (4, 4))["position_evenness"] == float("inf")
    evenness = mask_tools.mask_stats(make("random", 8192), GRID)["position_evenness"]
    assert 1 <= evenness < 1.15


def test_video_masks_report_frame_0_and_whether_frames_agree():
    need("tube")
    params = masking.resolve_params("tube", {}, 0.75, GRID)
    tube = masking.generate("tube", 16, GRID, 0.75, params, torch.Generator().manual_seed(0), frames=4)
    stats = mask_tools.mask_stats(tube, GRID)
    assert stats["frames_identical"] is True and stats["ratio_mean"] == 0.75
    assert mask_tools.mask_stats(tube[:, 0], GRID)["regions_mean"] == stats["regions_mean"]
    space_time = masking.generate("random", 16, GRID, 0.75, {}, torch.Generator().manual_seed(0), frames=4)
    assert mask_tools.mask_stats(space_time, GRID)["frames_identical"] is False
    walker = masking.resolve_params("walker", {}, 0.75, GRID)
    per_frame = masking.generate("walker", 16, GRID, 0.75, walker, torch.Generator().manual_seed(0), frames=4)
    assert mask_tools.mask_stats(per_frame, GRID)["frames_identical"] is False


# ----------------------------------------------------------------------------- references
@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.75), ((7, 10), 0.5), ((5, 5), 0.9), ((3, 3), 0.889)])
def test_reference_masks_exactly_num_masked(name, grid, ratio):
    need(name)
    if name == "grid":
        ratio = {0.9: 1 - 1 / 9}.get(ratio, ratio)
    masks = reference_batch(name, 40, grid, ratio, {}, seed=3)
    assert masks.shape == (40, grid[0] * grid[1]) and masks.dtype == torch.bool
    assert (masks.sum(1) == masking.num_masked(grid[0] * grid[1], ratio)).all()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_is_deterministic_in_seed(name):
    need(name)
    a, b = (reference_batch(name, 8, GRID, 0.75, {}, seed=5) for _ in range(2))
    assert torch.equal(a, b)
    if name != "grid":
        assert not torch.equal(a, reference_batch(name, 8, GRID, 0.75, {}, seed=6))


def test_reference_grid_is_the_batched_pattern():
    need("grid")
    assert torch.equal(reference_batch("grid", 4, GRID, 0.75, {}, 0), make("grid", 4))
    expected = np.ones(GRID, dtype=bool)
    expected[::2, ::2] = False
    assert (reference_grid(GRID, 0.75, {}, np.random.default_rng(0)) == expected.ravel()).all()


def test_reference_block_with_fixed_area_and_aspect_is_one_square_anywhere():
    need("block")
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(200):  # area 16, aspect 1: BEiT's first rectangle is a 4x4 square, nothing to top up
        mask = reference_block((8, 8), 0.25, {"min_patches": 16, "min_aspect": 1.0}, rng).reshape(8, 8)
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert mask.sum() == 16 and len(rows) == len(cols) == 4 and mask[rows[0]:rows[0] + 4, cols[0]:cols[0] + 4].all()
        corners.add((rows[0], cols[0]))
    assert len(corners) == 25  # every top-left corner 0..4 × 0..4 occurs (randint is inclusive)


@pytest.mark.parametrize("name", ["block", "walker", "random", "coarse"])
def test_references_and_batched_generators_agree_in_distribution(name):
    need(name)
    params = masking.resolve_params(name, {}, 0.75, GRID)
    batched = mask_tools.mask_stats(make(name, 512), GRID)
    reference = mask_tools.mask_stats(reference_batch(name, 512, GRID, 0.75, params, 0), GRID)
    assert reference["regions_mean"] == pytest.approx(batched["regions_mean"], rel=0.25)
    assert reference["region_size_mean"] == pytest.approx(batched["region_size_mean"], rel=0.25)


# ----------------------------------------------------------------------------- bench, gallery, command
def test_bench_masks_rows_have_positive_times():
    rows = mask_bench.bench_masks(batch=32, repeats=2)
    names = [r["strategy"] for r in rows]
    assert set(REFERENCES) & set(masking.list_strategies()) <= set(names)
    for row in rows:
        assert row["batched_ms"] > 0
        if row["strategy"] in REFERENCES:
            assert row["reference_ms"] > 0 and row["speedup"] == pytest.approx(row["reference_ms"] / row["batched_ms"])
        else:
            assert row["reference_ms"] is None and row["speedup"] is None
    table = mask_bench.format_bench_table(rows)
    assert table.splitlines()[0] == "| strategy | batched ms | per-sample ms | speed-up |"
    assert len(table.splitlines()) == len(rows) + 2


def test_draw_gallery_writes_a_png(tmp_path):
    path = tmp_path / "sub" / "gallery.png"
    mask_tools.draw_gallery([("random", make("random", 8)), ("block, 5 only", make("block", 5))], GRID, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["gallery.png"]  # no temporary file left


def test_drawing_does_not_switch_the_matplotlib_backend(tmp_path):
    import matplotlib
    before = matplotlib.get_backend()
    mask_tools.draw_gallery([("random", make("random", 2))], GRID, tmp_path / "g.png")
    assert matplotlib.get_backend() == before


def test_masks_command_one_strategy_is_one_json_line(tmp_path):
    png = str(tmp_path / "b.png")
    out = mask_tools.masks_command("block", 0.75, (14, 14), 64, None, {"min_patches": 8}, 0, True, png)
    assert json.loads(json.dumps(out)) == out
    assert out["strategy"] == "block" and out["grid"] == "14x14" and out["batch"] == 64 and out["ms_per_batch"] > 0
    assert out["ratio_mean"] == 0.75 and "regions_mean" in out and (tmp_path / "b.png").exists()
    plain = mask_tools.masks_command("random", 0.5, (4, 6), 8, None, {}, 0, False, None)
    assert "regions_mean" not in plain and "png" not in plain


def test_masks_command_video_and_all(tmp_path):
    need("tube")
    video = mask_tools.masks_command("tube", 0.9, (8, 8), 4, 6, {}, 1, True, None)
    assert video["frames"] == 6 and video["frames_identical"] is True
    out = mask_tools.masks_command("all", 0.75, (14, 14), 16, None, {}, 0, True, str(tmp_path / "all.png"))
    assert set(out["strategies"]) | set(out["skipped"]) == set(masking.list_strategies())
    assert (tmp_path / "all.png").read_bytes()[:4] == b"\x89PNG"
    odd = mask_tools.masks_command("all", 0.6, (14, 14), 4, None, {}, 0, False, None)
    assert "grid" in odd["skipped"] and "random" in odd["strategies"]


def test_masks_command_rejects_bad_input():
    from bench.core.errors import ConfigError
    with pytest.raises(ConfigError):
        mask_tools.masks_command("nope", 0.75, (14, 14), 4, None, {}, 0, False, None)
    with pytest.raises(ConfigError):
        mask_tools.masks_command("block", 0.75, (14, 14), 4, None, {"bogus": 1}, 0, False, None)
    with pytest.raises(ConfigError):  # "all": params per strategy, and bad ones are not silently skipped
        mask_tools.masks_command("all", 0.75, (14, 14), 4, None, {"block": {"bogus": 1}}, 0, False, None)
    with pytest.raises(ConfigError):
        mask_tools.masks_command("all", 0.75, (14, 14), 4, None, {"nope": {}}, 0, False, None)
