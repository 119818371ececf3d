"""`mimbench bench masks`: milliseconds per batch of every masking strategy, batched
(bench.masking.generate) against the per-sample references (bench.masking.reference).

    bench_masks(batch, grid_hw, ratio, repeats, device)   one row per strategy: batched_ms,
                                                          reference_ms, speedup
    format_bench_table(rows)                              those rows as a Markdown table
"""
from __future__ import annotations

import torch

from bench import masking
from bench.core.errors import ConfigError
from bench.masking.reference import REFERENCES, reference_batch
from bench.masking.tools import median_ms


def bench_masks(batch: int = 256, grid_hw=(14, 14), ratio: float = 0.75, repeats: int = 5,
                device: str = "cpu") -> list[dict]:
    """Per strategy: ms per batch of masking.generate, of reference_batch (None without one), speed-up.

    Strategies whose default parameters are invalid at `ratio` (grid at most ratios) are left out.
    """
    device = torch.device(device)
    rows = []
    for name in masking.list_strategies():
        try:
            params = masking.resolve_params(name, {}, ratio, grid_hw)
        except ConfigError:
            continue
        generator = torch.Generator(device).manual_seed(0)
        batched = median_ms(lambda: masking.generate(name, batch, grid_hw, ratio, params, generator, device),
                            repeats, device)
        reference = None
        if name in REFERENCES:
            reference = median_ms(lambda: reference_batch(name, batch, grid_hw, ratio, params, 0),
                                  repeats, torch.device("cpu"))
        rows.append({"strategy": name, "batched_ms": batched, "reference_ms": reference,
                     "speedup": reference / batched if reference is not None else None})
    return rows


def _sig(x: float) -> str:
    """2 significant digits below 10, whole numbers above: 0.04, 3.5, 74."""
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def format_bench_table(rows: list[dict]) -> str:
    """A Markdown table of bench_masks' rows."""
    lines = ["| strategy | batched ms | per-sample ms | speed-up |", "|---|---:|---:|---:|"]
    for row in rows:
        ref = "—" if row["reference_ms"] is None else f"{row['reference_ms']:.2f}"
        speedup = "—" if row["speedup"] is None else f"{_sig(row['speedup'])}×"
        lines.append(f"| {row['strategy']} | {row['batched_ms']:.2f} | {ref} | {speedup} |")
    return "\n".join(lines)
