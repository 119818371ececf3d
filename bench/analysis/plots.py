"""The reports' pictures: a study's results against its axes, and the drawing pieces the
comparison with a paper reuses (bars, lines, zoom, axis labels, atomic PNG saving).

    plot_study(frame, axes, path, title)   plot.png: a panel per eval against the first axis
    bars / lines / zoom / draw_references / not_run   one panel's parts
    save_png(fig, path)                    through bench.core.files.atomic_savefig, then closed
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches, ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from bench.analysis.frames import is_numeric, present_metrics, value_order, value_rank  # noqa: E402
from bench.analysis.tables import fmt_value  # noqa: E402
from bench.core.files import atomic_savefig  # noqa: E402

AXIS_LABELS = {
    "masking.ratio": "mask ratio",
    "masking.strategy": "mask sampling",
    "model.preset": "model",
    "model.decoder_depth": "decoder depth",
    "model.decoder_embed_dim": "decoder width",
    "model.mask_token_in_encoder": "mask token in the encoder",
    "model.depth": "encoder depth",
    "model.embed_dim": "encoder width",
    "model.patch_size": "patch size",
    "pretrain.target": "reconstruction target",
    "pretrain.epochs": "pre-training epochs",
    "data.name": "dataset",
    "data.augmentation": "data augmentation",
    "data.img_size": "image size",
    "evals.linear_probe.feature": "probe feature",
    "evals.finetune.feature": "fine-tune feature",
    "evals.finetune.blocks": "blocks fine-tuned",
}


def axis_label(key: str) -> str:
    return AXIS_LABELS.get(key, key)


def save_png(fig, path: Path | str) -> None:
    """Save atomically (readers never see half a PNG) at 150 dpi, then close the figure."""
    try:
        atomic_savefig(fig, path, dpi=150)
    finally:
        plt.close(fig)


def zoom(ax, values: pd.Series, from_zero: bool = False) -> None:
    """y limits around the data, with room above for the value labels. Bars start at zero
    (`from_zero`): a bar's height is its value, so a 1-point gap never looks like a 3x one."""
    lo, hi = float(values.min()), float(values.max())
    if from_zero:
        ax.set_ylim(0.0, max(hi, 1.0) * 1.15)
        return
    span = max(hi - lo, 1.0)
    ax.set_ylim(max(0.0, lo - 0.3 * span), hi + 0.3 * span)


def draw_references(ax, lines_at: list[tuple[str, float]]) -> None:
    """The baselines' means as labelled horizontal lines (dashed, then dotted)."""
    for i, (label, value) in enumerate(lines_at):
        ax.axhline(value, color="0.2", ls=("--", ":")[i % 2], lw=1.3, zorder=4)
        ax.annotate(f"{label}: {value:.1f}", (0.0, value), xycoords=("axes fraction", "data"),
                    xytext=(3, 2), textcoords="offset points", ha="left", va="bottom", fontsize=7,
                    color="0.15", zorder=5, bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))


def not_run(ax) -> None:
    ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def bars(ax, data: pd.DataFrame, metric: str, x_ticks: list[str], colors, n_levels: int, small: bool) -> None:
    """Mean per (x, level) as bars, dodged by level; each run a dot; the mean written on top.
    `data` has the columns _x (tick index) and _level (colour index)."""
    width = 0.8 / n_levels
    rng = np.random.default_rng(0)
    for (xi, li), runs in data.groupby(["_x", "_level"]):
        values = runs[metric].dropna()
        if values.empty:
            continue
        pos = xi + (li - (n_levels - 1) / 2) * width
        ax.bar(pos, values.mean(), width * 0.9, color=colors[li], edgecolor="white", zorder=2)
        jitter = rng.uniform(-0.18, 0.18, len(values)) * width
        ax.scatter(pos + jitter, values, s=12, color="0.15", alpha=0.6, linewidths=0, zorder=3)
        ax.annotate(f"{values.mean():.1f}", (pos, values.max()), xytext=(0, 4), textcoords="offset points",
                    ha="center", va="bottom", fontsize=7 if small else 9, rotation=90 if small else 0)
    ax.set_xticks(range(len(x_ticks)), x_ticks)
    ax.set_xlim(-0.6, len(x_ticks) - 0.4)
    ax.grid(axis="x", visible=False)


def lines(ax, data: pd.DataFrame, metric: str, x: str, x_order: list, colors, n_levels: int) -> None:
    """Mean per x as a line with markers, one line per level; each run a dot."""
    lo, hi = min(x_order), max(x_order)
    if lo > 0 and hi / lo >= 8 and all(float(v).is_integer() for v in x_order):
        ax.set_xscale("log", base=2)  # epochs 100 ... 1600, depths 1 ... 12: evenly spaced
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    log = ax.get_xscale() == "log"
    where = np.log2(x_order) if log else np.asarray(x_order, dtype=float)
    span = (where[-1] - where[0]) or 1.0
    crowded = len(x_order) > 1 and np.diff(where).min() < 0.08 * span  # labels would touch
    for li, runs in data.groupby("_level"):
        runs = runs.dropna(subset=[metric])
        if runs.empty:
            continue
        means = runs.groupby(x)[metric].mean()
        ax.plot(means.index, means.values, marker="o", lw=2, ms=6, color=colors[li], zorder=3)
        ax.scatter(runs[x], runs[metric], s=12, color=colors[li], alpha=0.45, linewidths=0, zorder=2)
        if n_levels == 1 and len(x_order) <= 8 and not crowded:
            for xv, mean in means.items():
                top = runs.loc[runs[x] == xv, metric].max()
                ax.annotate(f"{mean:.1f}", (xv, top), xytext=(0, 5), textcoords="offset points",
                            ha="center", va="bottom", fontsize=9)
    if not crowded:
        ax.set_xticks(x_order, [fmt_value(v) for v in x_order])
    if log:
        ax.set_xlim(lo / 2 ** (0.06 * span), hi * 2 ** (0.06 * span))
    else:
        ax.set_xlim(lo - 0.06 * span, hi + 0.06 * span)


def _levels(frame: pd.DataFrame, axes: list[str]) -> tuple[pd.Series, list[str]]:
    """Each run's label for the given axes (hue), and the labels in display order."""
    combos = frame[axes].drop_duplicates()
    for a in reversed(axes):  # stable sorts, last key first: lexicographic in axis order
        combos = combos.sort_values(a, key=lambda col: value_rank(col, value_order(frame[col.name])), kind="stable")

    def label(values) -> str:  # the legend's title names the axes
        return ", ".join(fmt_value(v) for v in values)

    order = [label(list(v)) for v in combos.itertuples(index=False)]
    return frame[axes].apply(lambda r: label(list(r)), axis=1), order


def plot_study(frame: pd.DataFrame, axes: list[str], path: Path | str, title: str,
               references: dict[str, list[tuple[str, float]]] | None = None) -> None:
    """A panel per eval (fine-tune, linear probe, and k-NN when run) against the first axis (x).

    A numeric axis gives lines through the means, a categorical one bars (from zero); further
    axes split the runs into coloured groups (the legend). Each run is a dot. `references`:
    per result column, baselines' means drawn as labelled dashed lines.
    """
    references = references or {}
    data = frame.copy()
    x = axes[0] if axes else "study"
    numeric = bool(axes) and is_numeric(data[x])
    x_order = value_order(data[x])
    data["_x"] = value_rank(data[x], x_order)  # a missing value goes last, on its own tick
    if data[x].isna().any():
        x_order = x_order + [np.nan]
    if len(axes) > 1:
        labels, levels = _levels(data, axes[1:])
        data["_level"] = labels.map(levels.index)
    else:
        levels = []
        data["_level"] = 0
    n_levels = max(len(levels), 1)
    colors = sns.color_palette("colorblind", n_levels)
    x_ticks = [fmt_value(v) for v in x_order]
    n_slots = len(x_order) * (1 if numeric else n_levels)
    panel_w = 5.0 if numeric else min(max(4.2, 0.5 * n_slots + 1.6), 7.5)
    metrics = present_metrics(data)
    fig_w = len(metrics) * panel_w

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig, panels = plt.subplots(1, len(metrics), figsize=(fig_w, 4.6), layout="constrained")
        for ax, (metric, name) in zip(panels, metrics.values()):
            ax.set_title(f"{name} (%)")
            if data[metric].isna().all():
                not_run(ax)
                continue
            if numeric:
                lines(ax, data, metric, x, x_order, colors, n_levels)
            else:
                bars(ax, data, metric, x_ticks, colors, n_levels, small=n_slots > 10)
                if max(map(len, x_ticks)) * len(x_ticks) > 6 * panel_w:  # long names: slant them
                    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
            lines_at = references.get(metric, [])
            zoom(ax, pd.concat([data[metric].dropna(), pd.Series([v for _, v in lines_at], dtype=float)]),
                 from_zero=not numeric)
            draw_references(ax, lines_at)
            ax.set_xlabel(axis_label(x) if axes else "")
            ax.set_ylabel("")
        handles, names = [], []
        if levels:
            for li, level in enumerate(levels):
                handles.append(plt.Line2D([], [], color=colors[li], marker="o", lw=2) if numeric else
                               patches.Patch(color=colors[li]))
                names.append(level)
        handles.append(plt.Line2D([], [], ls="", marker="o", ms=4, alpha=0.6,
                                  color=colors[0] if numeric and not levels else "0.15"))
        names.append("one run (seed)")
        legend_title = ", ".join(axis_label(a) for a in axes[1:]) or None
        per_row = max(1, int(fig_w * 13 / (max(map(len, names)) + 6)))  # entries that fit on a row
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), per_row), frameon=False,
                   title=legend_title, fontsize=9, title_fontsize=9)
        width = int(fig_w * 11)  # characters that fit across the figure
        fig.suptitle("\n".join(textwrap.fill(line, width) for line in title.splitlines()), fontsize=12)
        save_png(fig, path)
