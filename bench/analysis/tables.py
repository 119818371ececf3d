"""Text formatting shared by the reports: cell values, scores, intervals and Markdown table rows.

Pure functions of their arguments (no pandas frames, no files): report.py and the comparison
(compare_markdown.py) write their tables with these, so a value prints the same in both.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

MISSING = "—"  # a value that is not there: not run, one seed, no paper number


def is_missing(value: Any) -> bool:
    """None or a float NaN (numpy's included)."""
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))


def fmt_value(value: Any) -> str:
    """A config value as a table cell: floats as %g, missing as a dash, the rest as str()."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def fmt_score(mean: float, std: float, n: int) -> str:
    """'84.9 ± 0.3' over seeds; '84.9' for one seed; a dash when there is no value."""
    if is_missing(mean):
        return MISSING
    if n == 1 or is_missing(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def fmt_interval(lo: float, hi: float, n: int) -> str:
    """'[84.0, 85.0]'; a dash with fewer than two seeds (an interval of one value says nothing)."""
    return MISSING if n < 2 or is_missing(lo) else f"[{lo:.1f}, {hi:.1f}]"


def fmt_number(value: float | None, signed: bool = False) -> str:
    """One decimal ('+4.0' when signed); a dash for None or NaN."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def fmt_ratio(value: float) -> str:
    """'1.25×'; a dash for NaN."""
    return MISSING if math.isnan(value) else f"{value:.2f}×"


def count(n: int, noun: str) -> str:
    """'1 run', '3 runs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def marked(cell: str, vs_best: str, n_rows: int) -> str:
    """The best setting in bold, one not resolved from it with a dagger."""
    if n_rows < 2 or cell == MISSING:
        return cell
    return f"**{cell}**" if vs_best == "best" else f"{cell} †" if vs_best == "not resolved" else cell


def md_row(cells: list) -> str:
    """One Markdown table row, '|' in a cell escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def md_header(names: list[str], align: str) -> list[str]:
    """A Markdown table's header and rule; `align` has an 'l' or 'r' per column."""
    return [md_row(names), "|" + "|".join(" --- " if a == "l" else " ---: " for a in align) + "|"]
