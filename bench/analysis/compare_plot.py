"""comparison.png: per metric (ft, lin) a panel with ours against the subtable's axis, drawn as
plot.png draws it (bench.analysis.plots), and the paper's numbers on a right-hand axis of their own.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.analysis.matching import METRICS, Comparison, numeric_axis  # noqa: E402
from bench.papers import Subtable  # noqa: E402
from bench.analysis.plots import axis_label, bars, draw_references, lines, not_run, save_png, zoom  # noqa: E402


def plot_comparison(comparison: Comparison, path: Path | str, title: str,
                    references: dict[str, list[tuple[str, float]]] | None = None) -> None:
    """Per metric (ft, lin) a panel: ours against the axis, as report.plot_study draws it (left
    axis), the study's baselines as reference lines on ours (`references`: result column ->
    [(label, mean)], bench.analysis.baselines.reference_lines), and the paper's numbers as a
    second series on a right axis of their own."""
    references = references or {}
    sub = comparison.subtable
    ran = [s for s in comparison.settings if s.samples is not None]
    numeric = numeric_axis(ran)
    x_name = sub.axes[0] if numeric else " / ".join(sub.axes)
    x_order = [s.values[0] for s in ran] if numeric else [s.label for s in ran]
    position = {id(s): (s.values[0] if numeric else i) for i, s in enumerate(ran)}
    colors = sns.color_palette("colorblind", 2)
    ours_color, paper_color = colors[0], colors[1]
    panel_w = 5.6 if numeric else min(max(4.6, 0.7 * len(ran) + 2.0), 8.0)
    bounds = {c.claim.check["metric"]: c.claim.check["bound"] for c in comparison.claims
              if c.claim.check and c.claim.check["kind"] == "above"}

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig, panels = plt.subplots(1, len(METRICS), figsize=(len(METRICS) * panel_w, 4.9), layout="constrained")
        for ax, (metric, (column, label)) in zip(panels, METRICS.items()):
            ax.set_title(f"{label} (%)")
            data = pd.DataFrame([{x_name: s.values[0] if numeric else s.label, "_x": i, "_level": 0, column: v}
                                 for i, s in enumerate(ran) for v in s.ours(column)])
            if data.empty:
                not_run(ax)
                ax.set_title(f"{label} (%): not run by us")
                continue
            if numeric:
                lines(ax, data, column, x_name, x_order, [ours_color], 1)
            else:
                bars(ax, data, column, x_order, [ours_color], 1, small=len(ran) > 10)
                if max(map(len, x_order)) * len(x_order) > 6 * panel_w:
                    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
            lines_at = references.get(column, [])
            zoom(ax, pd.concat([data[column], pd.Series([v for _, v in lines_at], dtype=float)]), from_zero=not numeric)
            draw_references(ax, lines_at)
            ax.set_xlabel(axis_label(x_name) if numeric else ", ".join(axis_label(a) for a in sub.axes))
            ax.set_ylabel("ours (%)", color=ours_color)
            ax.tick_params(axis="y", colors=ours_color)
            _paper_series(ax, [(position[id(s)], s.paper(metric)) for s in ran if not math.isnan(s.paper(metric))],
                          bounds.get(metric), numeric, paper_color, sub)
        ours_handle = plt.Line2D([], [], color=ours_color, marker="o", lw=2) if numeric else patches.Patch(color=ours_color)
        handles = [ours_handle,
                   plt.Line2D([], [], ls="", marker="o", ms=4, alpha=0.6, color=ours_color if numeric else "0.15")]
        names = ["ours: mean over seeds (left axis)", "ours: one run (seed)"]
        if any(not math.isnan(s.paper(metric)) for s in ran for metric in METRICS):
            handles.append(plt.Line2D([], [], color=paper_color, marker="D", ls="--" if numeric else "", lw=1.5))
            names.append(f"paper: {sub.label} (right axis)")
        if bounds:
            handles.append(plt.Line2D([], [], color=paper_color, ls=":", lw=1.5))
            names.append("paper: a bound its text states")
        fig.legend(handles, names, loc="outside lower center", ncol=len(names), frameon=False, fontsize=9)
        width = int(len(METRICS) * panel_w * 11)
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=12)
        save_png(fig, Path(path))


PAPER_BAR_OFFSET = 0.22  # where a bar's paper diamond sits, right of its centre (bar width 0.8)


def _paper_series(ax, points: list[tuple], bound: float | None, numeric: bool, color, sub: Subtable) -> None:
    """The paper's numbers on a right-hand y axis; a dotted line for a bound; a note when none."""
    if not points and bound is None:
        ax.text(0.02, 0.97, "paper: no number given", transform=ax.transAxes, ha="left", va="top",
                fontsize=8, color=color)
        return
    right = ax.twinx()
    right.grid(False)
    values = [y for _, y in points]
    if points:
        # on a line, at the setting; on a bar, in its right-hand part, clear of our mean's label
        # (centred above the bar); the paper's value is written beside its diamond either way
        xs = [x if numeric else x + PAPER_BAR_OFFSET for x, _ in points]
        right.plot(xs, values, ls="--" if numeric else "", lw=1.5, marker="D", ms=7, color=color, zorder=4)
        for x, y in zip(xs, values):
            right.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(7, 0), ha="left", va="center",
                           fontsize=8, color=color, fontweight="bold")
    if bound is not None:
        right.axhline(bound, color=color, ls=":", lw=1.5)
        right.annotate(f"> {bound:g}", (1.0, bound), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                       textcoords="offset points", ha="right", va="bottom", fontsize=8, color=color)
        values.append(bound)
    zoom(right, pd.Series(values), from_zero=not numeric)  # the paper's axis on the same footing as ours
    right.set_ylabel("paper (%)", color=color)
    right.tick_params(axis="y", colors=color)
