"""Masking strategies: exact counts, determinism, the grid pattern, block masks are blocky."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import masking
from bench.core.errors import ConfigError
from bench.masking import counts
from bench.masking.block import MAX_BIT_WIDTH, BlockShape, _block_rounds_numpy, _block_rounds_torch
from bench.masking.ratios import GRID_CELLS
from bench.masking.walker import _WALK_CHUNK, _walker_steps_numpy, _walker_steps_torch


def make(name, batch, grid, ratio, seed=0, **params):
    resolved = masking.resolve_params(name, params, ratio, grid)
    return masking.generate(name, batch, grid, ratio, resolved, torch.Generator().manual_seed(seed))


GRID_RATIOS = sorted({1 - 1 / (a * b) for a, b in GRID_CELLS})


HIDING = sorted(set(masking.list_strategies()) - {"none"})  # `none` hides nothing (test below)


@settings(max_examples=120, deadline=None)
@given(name=st.sampled_from(HIDING), ratio=st.floats(0.05, 0.95),
       height=st.integers(2, 16), width=st.integers(2, 16), batch=st.integers(1, 24), seed=st.integers(0, 2**31),
       grid_ratio=st.sampled_from(GRID_RATIOS))
def test_every_sample_has_exactly_round_ratio_L_masked(name, ratio, height, width, batch, seed, grid_ratio):
    if name == "grid":  # grid makes only the ratios 1 - 1/(a*b); others are a validation error
        ratio = grid_ratio
    mask = make(name, batch, (height, width), ratio, seed)
    length = height * width
    assert mask.shape == (batch, length) and mask.dtype == torch.bool
    expected = masking.num_masked(length, ratio)
    assert expected == min(max(int(ratio * length + 0.5), 1), length - 1)
    assert (mask.sum(dim=1) == expected).all()
    assert (mask.sum(dim=1) > 0).all() and (mask.sum(dim=1) < length).all()  # never all or nothing


def test_none_hides_nothing_whatever_the_ratio():
    assert not make("none", 8, (8, 8), 0.75, 0).any() and make("none", 8, (8, 8), 0.75, 0).shape == (8, 64)


@pytest.mark.parametrize("name", HIDING)
def test_same_seed_same_masks_other_seed_other_masks(name):
    a, b, c = make(name, 16, (14, 14), 0.75, 3), make(name, 16, (14, 14), 0.75, 3), make(name, 16, (14, 14), 0.75, 4)
    assert torch.equal(a, b)
    if name != "grid":  # the default grid has no randomness at 75% on an even grid
        assert not torch.equal(a, c)


def test_grid_keeps_one_patch_of_every_2x2():
    mask = make("grid", 4, (8, 8), 0.75).view(4, 8, 8)
    visible = ~mask
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[::2, ::2] = True
    assert all(torch.equal(v, expected) for v in visible)
    shifted = make("grid", 64, (8, 8), 0.75, random_offset=True).view(64, 8, 8)
    for v in ~shifted:  # any offset: the visible patches form a stride-2 lattice
        rows, cols = v.nonzero(as_tuple=True)
        assert len(rows) == 16 and len(set((rows % 2).tolist())) == 1 and len(set((cols % 2).tolist())) == 1


def regions(mask2d: torch.Tensor) -> int:
    """Number of 4-connected masked regions."""
    seen, count = set(), 0
    h, w = mask2d.shape
    for i in range(h):
        for j in range(w):
            if mask2d[i, j] and (i, j) not in seen:
                count += 1
                stack = [(i, j)]
                while stack:
                    a, b = stack.pop()
                    if (a, b) in seen or not (0 <= a < h and 0 <= b < w) or not mask2d[a, b]:
                        continue
                    seen.add((a, b))
                    stack += [(a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)]
    return count


@pytest.mark.parametrize("name", ["block", "walker", "coarse"])
@pytest.mark.parametrize("ratio", [0.4, 0.6])
def test_structured_masks_form_fewer_larger_regions_than_random(name, ratio):
    structured = make(name, 32, (14, 14), ratio).view(32, 14, 14)
    rand = make("random", 32, (14, 14), ratio).view(32, 14, 14)
    structured_regions = sum(regions(m) for m in structured) / 32
    random_regions = sum(regions(m) for m in rand) / 32
    assert structured_regions < random_regions / 2, (structured_regions, random_regions)


def test_walker_paths_are_connected_between_jumps():
    # with jumps effectively disabled, one walk: a single connected region
    mask = make("walker", 16, (10, 10), 0.3, restart_after=10**6).view(16, 10, 10)
    assert all(regions(m) == 1 for m in mask)


def test_tube_masks_are_identical_across_frames():
    params = masking.resolve_params("tube", {"spatial": "block"}, 0.9, (14, 14))
    mask = masking.generate("tube", 8, (14, 14), 0.9, params, torch.Generator().manual_seed(0), frames=8)
    assert mask.shape == (8, 8, 196)
    assert (mask == mask[:, :1]).all()
    assert (mask.sum(-1) == masking.num_masked(196, 0.9)).all()
    assert not (mask[0, 0] == mask[1, 0]).all()
    block = masking.resolve_params("block", {}, 0.9, (14, 14))
    framewise = masking.generate("block", 8, (14, 14), 0.9, block, torch.Generator().manual_seed(0), frames=8)
    assert not (framewise == framewise[:, :1]).all()  # other strategies mask each frame anew, exactly
    assert (framewise.sum(-1) == masking.num_masked(196, 0.9)).all()
    joint = masking.generate("random", 8, (14, 14), 0.9, {}, torch.Generator().manual_seed(0), frames=8)
    assert not (joint == joint[:, :1]).all()  # random: one draw over all frames' tokens (VideoMAE's)
    assert (joint.flatten(1).sum(1) == masking.num_masked(8 * 196, 0.9)).all()


def test_coarse_masks_whole_cells():
    mask = make("coarse", 16, (8, 8), 0.75, scale=2).view(16, 4, 2, 4, 2)
    cells = mask.sum(dim=(2, 4))  # 2x2 cells: fully masked or fully visible
    assert ((cells == 0) | (cells == 4)).all()


def test_multi_uses_every_strategy_by_weight():
    grid_pattern = make("grid", 1, (8, 8), 0.75)[0]
    mask = make("multi", 4000, (8, 8), 0.75, weights={"grid": 1, "random": 3})
    share = (mask == grid_pattern).all(dim=1).float().mean().item()
    assert 0.22 < share < 0.28, share  # a random mask equal to the grid pattern is vanishingly rare


def test_random_masking_covers_positions_uniformly():
    mask = make("random", 4000, (8, 8), 0.75).float().mean(dim=0)
    assert torch.allclose(mask, torch.full_like(mask, 0.75), atol=0.04)


def test_bad_strategy_or_parameter_is_a_one_line_error():
    with pytest.raises(ConfigError, match=r"masking.strategy: 'spiral' is not allowed; allowed: random, block, grid, "
                                          r"walker, tube, coarse, none, frame, multi$"):
        masking.resolve_params("spiral", {}, 0.75, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.params.min_aspect: 0.0 is out of range"):
        masking.resolve_params("block", {"min_aspect": 0.0}, 0.75, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.params.random_offset: 'yes' has the wrong type"):
        masking.resolve_params("grid", {"random_offset": "yes"}, 0.75, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.ratio: 0.6 cannot be made by grid masking .* allowed: 1 - 1/\(a\*b\)"):
        masking.resolve_params("grid", {}, 0.6, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.params.weights.spiral: not a strategy to mix"):
        masking.resolve_params("multi", {"weights": {"spiral": 1}}, 0.75, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.params.params.block.attempts: 0 is out of range"):
        masking.resolve_params("multi", {"weights": {"block": 1}, "params": {"block": {"attempts": 0}}}, 0.75, (8, 8))
    with pytest.raises(ConfigError, match=r"masking.params.restart_after: 0 is out of range"):
        masking.resolve_params("walker", {"restart_after": 0}, 0.75, (8, 8))
    for name, params in [("tube", {"spatial": "tube"}), ("coarse", {"scale": 0})]:
        with pytest.raises(ConfigError) as err:
            masking.resolve_params(name, params, 0.75, (8, 8))
        assert "\n" not in str(err.value) and "allowed" in str(err.value)


@pytest.mark.parametrize("grid_hw,ratio,min_patches", [((14, 14), 0.75, 4), ((8, 8), 0.5, 4),
                                                       ((7, 12), 0.4, 16), ((16, 16), 0.9, 16)])
def test_block_numpy_and_torch_rounds_agree_on_the_same_uniforms(grid_hw, ratio, min_patches):
    # the CPU path (NumPy, bit rows, shrinking batch) and the device path (torch) are one algorithm:
    # fed the same uniforms per sample and round, they place the same rectangles
    batch = 48
    params = masking.resolve_params("block", {"min_patches": min_patches}, ratio, grid_hw)
    shape = BlockShape.from_params(params, masking.num_masked(grid_hw[0] * grid_hw[1], ratio))
    table = np.random.default_rng(0).random((80, 4, batch, shape.attempts), dtype=np.float32)
    rounds = iter(range(80))
    numpy_mask = _block_rounds_numpy(batch, grid_hw, shape, lambda ids: table[next(rounds)][:, ids])
    rounds = iter(range(80))
    torch_mask = _block_rounds_torch(batch, grid_hw, shape, lambda: torch.from_numpy(table[next(rounds)]),
                                     torch.device("cpu"))
    assert torch.equal(torch.from_numpy(numpy_mask), torch_mask)
    assert (numpy_mask.sum(1) <= shape.target).all() and numpy_mask.sum(1).min() > 0


@pytest.mark.parametrize("exact_count", [masking.exact_count, counts.exact_count_torch])
def test_exact_count_tops_up_and_trims_keeping_what_it_can(exact_count):
    # the CPU path (NumPy) and the device path (torch, run here on the CPU)
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :2] = True   # too few: keeps both, adds 3
    mask[1, :8] = True   # too many: keeps 5 of its 8
    mask[2, 5:] = True   # exact: unchanged
    out = exact_count(mask, 5, generator)
    assert out.sum(1).tolist() == [5, 5, 5]
    assert out[0, :2].all() and not out[1, 8:].any() and torch.equal(out[2], mask[2])
    assert mask.sum().item() == 2 + 8 + 5  # the input is left as it was
    # which patches get added is random but spread: over many draws every free patch of row 0 is used
    tops = torch.stack([exact_count(mask, 5, generator)[0] for _ in range(200)])
    assert tops[:, 2:].sum(0).min() > 0


def test_block_on_grids_wider_than_the_bit_rows_takes_the_torch_rounds():
    assert 20 > MAX_BIT_WIDTH
    mask = make("block", 16, (6, 20), 0.6)
    assert (mask.sum(1) == masking.num_masked(120, 0.6)).all()
    assert torch.equal(mask, make("block", 16, (6, 20), 0.6))  # same seed, same masks


@pytest.mark.parametrize("grid_hw,ratio,restart_after", [((14, 14), 0.75, 4), ((6, 9), 0.5, 2), ((5, 5), 0.9, 10)])
def test_walker_numpy_and_torch_steps_agree_on_the_same_draws(grid_hw, ratio, restart_after):
    # the CPU path (NumPy, walks leave when done) and the device path (torch) are one algorithm
    batch, length = 40, grid_hw[0] * grid_hw[1]
    target = masking.num_masked(length, ratio)
    rng = np.random.default_rng(1)
    start = rng.random(batch, dtype=np.float32)
    move_chunks = rng.random((200, _WALK_CHUNK, batch), dtype=np.float32)
    jumps = rng.random((2000, batch, length), dtype=np.float32)

    def draws():
        chunks, jumps_made = iter(move_chunks), iter(jumps)
        return (lambda chunk: next(chunks)), jumps_made

    moves, jumps_made = draws()
    numpy_mask = _walker_steps_numpy(batch, grid_hw, target, restart_after, start, moves,
                                     lambda ids: next(jumps_made)[ids])
    moves, jumps_made = draws()
    torch_mask = _walker_steps_torch(
        batch, grid_hw, target, restart_after, torch.from_numpy(start),
        lambda chunk: torch.from_numpy(moves(chunk)), lambda: torch.from_numpy(next(jumps_made)),
        torch.device("cpu"))
    assert torch.equal(torch.from_numpy(numpy_mask), torch_mask)
    assert (numpy_mask.sum(1) == target).all()
