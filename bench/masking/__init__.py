"""Masks: which patches a model may not see. One registry of strategies, one module per family:

    random.py   random (MAE: a uniformly random subset), coarse (SimMIM: random at a coarser cell)
    block.py    block (BEiT: rectangles of random area and aspect ratio)
    grid.py     grid (MAE Table 1f: keep one patch of every a×b cell)
    walker.py   walker (a random walk masking what it visits)
    compose.py  tube (VideoMAE: one spatial mask for every frame), frame (VideoMAE Table 1b: whole
                frames), multi (a strategy per sample)
    ratios.py   num_masked and the grid cells, pure Python
    counts.py   exact_count (trim or top up to the count) and numpy_rng, shared by the families

Every strategy returns a B×L boolean mask (True = masked, L = grid height × width, row-major)
with exactly `num_masked(L, ratio)` masked patches in every sample, so MAE's gather of the
visible tokens works for all of them — except `none`, which hides nothing (BEiT's "− masking").
Randomness comes only from the torch.Generator passed in: the same seed gives the same masks.
With `frames=T` (a clip's T time steps of tokens), `generate` returns B×T×L, as VideoMAE
(Table 1b) compares them: tube repeats one spatial mask over the frames; random is uniform over
all T·L space-time tokens, num_masked(T·L) per clip; frame masks num_masked(T) whole frames (it
needs frames: a ConfigError without); every other strategy masks each frame independently.

This module imports neither torch nor NumPy: an entry names its generate function as
"module:function" (imported on first use) and checks its parameters in pure Python, so
validating a config stays quick. Adding a strategy is one `register_strategy` call.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bench.core.errors import ConfigError
from bench.core.options import INT_LIMIT, is_number_text, quoted_number
from bench.core.registry import Registry, load
from bench.masking.ratios import GRID_CELLS, GRID_TOLERANCE, grid_cell, num_masked  # noqa: F401 (num_masked: public)

if TYPE_CHECKING:
    import torch

# a generate function: (batch, grid_hw, ratio, params, generator, device) -> bool B×L tensor
# a check: (params, ratio, grid_hw, prefix) -> params, after the type checks; prefix is where
# the params sit inside masking.params ("" at the top, "spatial_params." inside tube's)


@dataclass(frozen=True, eq=False)
class Strategy:
    """One registered masking strategy."""

    name: str
    ref: str | Callable         # its generate function, or "module:function" naming it
    defaults: dict              # parameter -> default
    types: dict                 # parameter -> type, where the default is None
    check: Callable | None      # validates and normalises the resolved params (pure Python)
    doc: str

    @functools.cached_property
    def generate(self) -> Callable:
        """The generate function, imported on first use."""
        return load(self.ref) if isinstance(self.ref, str) else self.ref


_STRATEGIES = Registry("masking strategy", "masking.strategy")
TEMPORAL = ("frame",)  # strategies that mask over time only: they need frames


def register_strategy(name: str, generate: str | Callable, defaults: dict | None = None,
                      types: dict | None = None, check: Callable | None = None, doc: str = "") -> Strategy:
    """File a strategy under `name`. `types` gives the type of each parameter whose default is None."""
    defaults, types = dict(defaults or {}), dict(types or {})
    untyped = [key for key, value in defaults.items() if value is None and key not in types]
    if untyped:
        raise ValueError(f"masking strategy {name!r}: no type for {', '.join(untyped)} (default None)")
    return _STRATEGIES.add(name, Strategy(name, generate, defaults, types, check, doc))


def create_strategy(name: str) -> Strategy:
    """The entry `name` (a one-line ConfigError listing the strategies otherwise)."""
    return _STRATEGIES.get(name)


def list_strategies(video: bool = False) -> tuple[str, ...]:
    """The strategies that mask single images, in registration order — what galleries, benchmarks
    and loops over strategies draw; `video=True` adds those that need frames (TEMPORAL: frame)."""
    return tuple(s for s in _STRATEGIES.names() if video or s not in TEMPORAL)


def resolve_params(name: str, params: dict, ratio: float, grid_hw: tuple[int, int], _prefix: str = "") -> dict:
    """Check a strategy's parameters and fill in its defaults (raises one-line ConfigError)."""
    strategy = _STRATEGIES.get(name, key=f"masking.params.{_prefix}" if _prefix else None)
    defaults = strategy.defaults
    if not isinstance(params or {}, dict):
        raise ConfigError(f"masking.params.{_prefix[:-1]}" if _prefix else "masking.params",
                          f"{params!r} has the wrong type; allowed: a mapping")
    params = dict(params or {})
    for key in params:
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ConfigError(f"masking.params.{_prefix}{key}",
                              f"unknown parameter of strategy {name!r}; allowed: {allowed}")
    out = {**defaults, **params}
    for key, value in out.items():
        kind = type(defaults[key]) if defaults[key] is not None else strategy.types[key]
        if value is None and defaults[key] is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = _as_float(f"masking.params.{_prefix}{key}", value)
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            if kind in (int, float) and is_number_text(value):
                raise quoted_number(f"masking.params.{_prefix}{key}", value, kind.__name__)
            raise ConfigError(f"masking.params.{_prefix}{key}",
                              f"{value!r} has the wrong type; allowed: {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise ConfigError(f"masking.params.{_prefix}{key}", f"{value!r} is not a finite number; allowed: float")
        if kind is int and not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"masking.params.{_prefix}{key}", f"{value!r} is out of range; allowed: int below 2**63")
        out[key] = value
    return strategy.check(out, ratio, grid_hw, _prefix) if strategy.check else out


def generate(name: str, batch: int, grid_hw: tuple[int, int], ratio: float, params: dict,
             generator: torch.Generator, device: torch.device | str = "cpu", frames: int | None = None
             ) -> torch.Tensor:
    """A B×L boolean mask (True = masked) with exactly num_masked(L, ratio) True per row.

    With `frames`, a B×T×L mask: tube repeats one spatial mask; random draws num_masked(T·L) of
    the space-time tokens; frame masks num_masked(T) whole frames; the others mask frames independently.
    """
    import torch

    device = torch.device(device)
    make = _STRATEGIES.get(name).generate
    grid_hw = tuple(grid_hw)
    length = grid_hw[0] * grid_hw[1]
    if name in TEMPORAL and frames is None:
        raise ConfigError("masking.strategy", f"{name!r} masks whole frames: needs video: data.frames; "
                                              f"allowed on images: {', '.join(list_strategies())}")
    if frames is None:
        return make(batch, grid_hw, ratio, params, generator, device)
    if name == "tube":  # one spatial mask, repeated
        return make(batch, grid_hw, ratio, params, generator, device).unsqueeze(1).expand(-1, frames, -1)
    if name == "random":  # uniform over the T·L space-time tokens
        return make(batch, (frames * grid_hw[0], grid_hw[1]), ratio, params, generator, device).view(batch, frames, -1)
    if name == "frame":  # a mask over the T frames, each spread over its L tokens
        return make(batch, (frames, 1), ratio, params, generator, device).unsqueeze(2).expand(-1, -1, length)
    return make(batch * frames, grid_hw, ratio, params, generator, device).view(batch, frames, -1)


def exact_count(mask: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Trim or top up each row of `mask` at random to exactly `count` True entries (counts.py)."""
    from bench.masking import counts

    return counts.exact_count(mask, count, generator)


# ----------------------------------------------------------------------------- parameter checks
_COMPOSED = ("tube", "multi", "none") + TEMPORAL  # built from others (neither can contain the other),
#                                                   hiding nothing, or over time: no part of tube or multi


def _as_float(key: str, value: int) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        raise ConfigError(key, f"an integer of {len(str(abs(value)))} digits is out of range; allowed: float") from None


def _check_range(key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"masking.params.{key}", f"{value!r} is out of range; allowed: {allowed}")


BEIT_MIN_BLOCK, BEIT_GRID = 16, 196  # BEiT pre-trains with blocks of at least 16 patches of 14x14
BLOCK_FILLS = ("blocks", "random")


def block_min_patches(grid_hw) -> int:
    """BEiT's smallest block scaled to the grid: round(16 * L / 196), at least 1 (5 on 8x8, 16 on 14x14)."""
    return max(1, round(BEIT_MIN_BLOCK * grid_hw[0] * grid_hw[1] / BEIT_GRID))


def _check_block(out: dict, ratio: float, grid_hw, prefix: str) -> dict:
    """min_patches null (the default) becomes BEiT's smallest block scaled to the grid; fill is a known one."""
    if out["min_patches"] is None:
        out["min_patches"] = block_min_patches(grid_hw)
    _check_range(prefix + "min_patches", out["min_patches"], out["min_patches"] >= 1, ">= 1")
    _check_range(prefix + "fill", out["fill"], out["fill"] in BLOCK_FILLS, " or ".join(BLOCK_FILLS))
    _check_range(prefix + "min_aspect", out["min_aspect"], 0 < out["min_aspect"] <= 1, "0 < x <= 1")
    _check_range(prefix + "attempts", out["attempts"], out["attempts"] >= 1, ">= 1")
    if out["max_patches"] is not None:
        _check_range(prefix + "max_patches", out["max_patches"], out["max_patches"] >= out["min_patches"],
                     f"null or an int >= min_patches {out['min_patches']}")
    if out["max_aspect"] is not None:
        _check_range(prefix + "max_aspect", out["max_aspect"], out["max_aspect"] >= out["min_aspect"],
                     f"null or a float >= min_aspect {out['min_aspect']}")
    return out


def _check_grid(out: dict, ratio: float, grid_hw, prefix: str) -> dict:
    """A cell, if given, is [a, b] with a*b >= 2; its pattern (or the default cell's) must make `ratio`."""
    cell = out["cell"]
    if cell is not None:
        _check_range(prefix + "cell", cell, len(cell) == 2 and all(type(v) is int and 1 <= v < INT_LIMIT for v in cell)
                     and cell[0] * cell[1] >= 2, "[a, b], two integers >= 1 with a*b >= 2")
    cell = tuple(cell) if cell else grid_cell(ratio)
    pattern = 1 - 1 / (cell[0] * cell[1])
    if abs(pattern - ratio) > GRID_TOLERANCE:
        hits = ", ".join(f"{1 - 1 / (a * b):.4g} ({a}x{b})" for a, b in GRID_CELLS)
        raise ConfigError("masking.ratio", f"{ratio} cannot be made by grid masking "
                                           f"({cell[0]}x{cell[1]} cell masks {pattern:.4g}); "
                                           f"allowed: 1 - 1/(a*b) within {GRID_TOLERANCE}: {hits}")
    return out


def _check_walker(out: dict, ratio: float, grid_hw, prefix: str) -> dict:
    _check_range(prefix + "restart_after", out["restart_after"], out["restart_after"] >= 1, ">= 1")
    return out


def _check_coarse(out: dict, ratio: float, grid_hw, prefix: str) -> dict:
    _check_range(prefix + "scale", out["scale"], out["scale"] >= 1, ">= 1")
    return out


def _check_tube(out: dict, ratio: float, grid_hw, prefix: str) -> dict:
    """The spatial strategy is one that is not built from others; its params are resolved in turn."""
    if out["spatial"] in _COMPOSED or out["spatial"] not in _STRATEGIES:
        allowed = ", ".join(s for s in _STRATEGIES if s not in _COMPOSED)
        raise ConfigError("masking.params.spatial", f"{out['spatial']!r} is not allowed; allowed: {allowed}")
    out["spatial_params"] = resolve_params(out["spatial"], out["spatial_params"], ratio, grid_hw,
                                           _prefix="spatial_params.")
    return out


def _check_multi(out: dict, ratio: float, grid_hw, prefix: str) -> dict:
    """Weights >= 0 (one positive) of strategies not built from others; params only for those, resolved."""
    weights = out["weights"]
    allowed = ", ".join(s for s in _STRATEGIES if s not in _COMPOSED)
    for key, weight in weights.items():
        if key not in _STRATEGIES or key in _COMPOSED:
            raise ConfigError(f"masking.params.weights.{key}", f"not a strategy to mix; allowed: {allowed}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < 1e300:
            raise ConfigError(f"masking.params.weights.{key}",
                              f"{weight!r} is not allowed; allowed: a finite number >= 0")
    if not weights or sum(weights.values()) <= 0:
        raise ConfigError("masking.params.weights", "needs at least one positive weight")
    for key in out["params"]:
        if key not in weights:
            raise ConfigError(f"masking.params.params.{key}", f"not in weights; allowed: {', '.join(weights)}")
    out["weights"] = {k: float(v) for k, v in weights.items()}
    out["params"] = {k: resolve_params(k, out["params"].get(k, {}), ratio, grid_hw, _prefix=f"params.{k}.")
                     for k in weights}
    return out


# ----------------------------------------------------------------------------- the strategies
# in this order: reports and galleries list them so
register_strategy("random", "bench.masking.random:random_masking",
                  doc="uniform random subset per sample (MAE); with frames, uniform over all T·L "
                      "space-time tokens (VideoMAE Table 1b 'random')")
register_strategy("block", "bench.masking.block:block_masking",
                  defaults={"min_patches": None, "max_patches": None, "min_aspect": 0.3, "max_aspect": None,
                            "attempts": 10, "fill": "blocks"},
                  types={"min_patches": int, "max_patches": int, "max_aspect": float}, check=_check_block,
                  doc="rectangles of random area and aspect ratio (BEiT), grown to the exact count; "
                      "min_patches null = BEiT's 16 of 196 scaled to the grid, round(16 L / 196), "
                      "fill random = the old uniform top-up")
register_strategy("grid", "bench.masking.grid:grid_masking",
                  defaults={"cell": None, "random_offset": False}, types={"cell": list}, check=_check_grid,
                  doc="keep one patch of every a×b cell (MAE Table 1f)")
register_strategy("walker", "bench.masking.walker:walker_masking",
                  defaults={"restart_after": 4}, check=_check_walker,
                  doc="a random walk masking what it visits")
register_strategy("tube", "bench.masking.compose:tube_masking",
                  defaults={"spatial": "random", "spatial_params": {}}, check=_check_tube,
                  doc="one spatial mask for every frame (VideoMAE's default, Table 1b 'tube')")
register_strategy("coarse", "bench.masking.random:coarse_masking",
                  defaults={"scale": 2}, check=_check_coarse,
                  doc="random at a coarser mask-patch size (SimMIM)")
register_strategy("none", "bench.masking.random:no_masking",
                  doc="nothing hidden, whatever the ratio (BEiT Table 4 '- masking'; needs pretrain.loss_on all)")
register_strategy("frame", "bench.masking.compose:frame_masking",
                  doc="whole frames, num_masked(T) of the T per clip (VideoMAE Table 1b 'frame', 7 of 8 "
                      "at 87.5%); needs video: data.frames")
register_strategy("multi", "bench.masking.compose:multi_masking",
                  defaults={"weights": {"random": 1.0, "block": 1.0}, "params": {}}, check=_check_multi,
                  doc="a strategy drawn per sample by weight")
