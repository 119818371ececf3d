"""Reports: tables and plots from a study's finished runs.

    reports/<study>/
        runs.csv    one row per finished run: its flattened config and its result
        table.csv   one row per setting of the varying axes, per eval: mean, std, n and the 95%
                    bootstrap interval over seeds, and whether it is the best or within seed noise of it
        table.md    the same table in markdown, with the study's description and setup
        plot.png    fine-tune and linear probe top-1 (and k-NN, when run) against the varying axis
        comparison.md / .csv / .png   when the study names the paper subtable it reproduces (bench.analysis.compare)

A run counts when its result.json is complete (see bench.launch.store); half-written runs are
skipped. The axes are inferred from the configs: the keys whose values differ between runs,
the seed aside, and leaving out the keys a setting implies (a masking strategy's params, a
model preset's widths and depths) when they only follow it.

Seed noise (bench.analysis.stats.within_noise): the table marks the settings whose difference from the
best setting is within two standard errors of that difference.
"""
from __future__ import annotations

import json
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patches, ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import yaml  # noqa: E402

from bench.core.errors import ConfigError  # noqa: E402
from bench.study.config import run_id, with_added_later  # noqa: E402
from bench.analysis.stats import NOISE_RULE, bootstrap_ci, within_noise  # noqa: E402
from bench.launch.store import atomic_write_text, iter_runs, read_result, read_study_manifest  # noqa: E402

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on 10k configs

METRICS = {"finetune": ("finetune_top1", "fine-tune top-1"),
           "linear_probe": ("linear_probe_top1", "linear probe top-1"),
           "knn": ("knn_top1", "k-NN top-1")}
OPTIONAL_METRICS = ("knn",)  # shown only when some run has a value

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

MISSING = "—"


# ----------------------------------------------------------------------------- the runs
def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'masking': {'ratio': 0.75}} -> {'masking.ratio': 0.75}; lists become their JSON text."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def runs_frame(study_dir: Path | str) -> pd.DataFrame:
    """One row per finished run: run_id, the config as dotted keys, then the scalar results.

    Config columns are `seed` and the dotted keys ('masking.ratio'); result columns have no
    dot. Nested result values (the per-eval details) stay in result.json.
    """
    rows = []
    for run in iter_runs(study_dir):
        result = read_result(run.result_path)
        if result is None:
            continue
        config = result.get("config")
        if config is None:  # result.json written before it carried the config
            try:
                config = yaml.load(run.config_path.read_text(), Loader=_Loader)
            except (OSError, yaml.YAMLError):
                continue
        if not isinstance(config, dict):
            continue
        config = with_added_later(config)  # written before a key existed: its old value
        row = _flatten(config)
        row.update({k: v for k, v in result.items() if not isinstance(v, (dict, list))})
        rows.append((run_id(config), row))
    frame = pd.DataFrame(_current_runs(rows))
    if frame.empty:
        return frame
    # the spec's order (from the launch's study.json), so categories read as the spec lists them
    spec_order = {rid: i for i, rid in enumerate(read_study_manifest(study_dir).get("runs", []))}
    position = frame["run_id"].map(lambda rid: spec_order.get(rid, len(spec_order)))
    frame = frame.iloc[position.argsort(kind="stable")].reset_index(drop=True)
    metrics = [col for col, _ in METRICS.values() if col in frame]
    for col in metrics:  # None (eval disabled) -> NaN
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    config_cols = sorted(c for c in frame.columns if _is_config(c) and c != "seed")
    first = ["run_id", "study"] + (["seed"] if "seed" in frame else [])
    rest = sorted(c for c in frame.columns if c not in set(first) | set(config_cols) | set(metrics))
    return frame[first + config_cols + metrics + rest]


def _current_runs(rows: list[tuple[str, dict]]) -> list[dict]:
    """The rows to report: a run whose folder is named by an older id scheme (its config's id
    today differs) counts only while no run of the same config exists under today's id — one
    per config, so a re-run under the new id replaces it instead of doubling its seed."""
    reported = {rid for rid, row in rows if row.get("run_id") == rid}  # configs run under today's id
    kept = []
    for rid, row in rows:
        if row.get("run_id") == rid:
            kept.append(row)
        elif rid not in reported:
            reported.add(rid)
            kept.append(row)
    return kept


def present_metrics(frame: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """The evals to report: fine-tune and linear probe always, an optional one (k-NN) when it has values."""
    return {name: (col, label) for name, (col, label) in METRICS.items()
            if name not in OPTIONAL_METRICS or (col in frame and frame[col].notna().any())}


def _is_config(column: str) -> bool:
    return column == "seed" or "." in column


def _implied(key: str) -> bool:
    """Keys that the config fills in from another setting: strategy and target params, preset numbers."""
    return (key.startswith(("masking.params.", "pretrain.target_params."))
            or (key.startswith("model.") and key != "model.preset"))


def _is_numeric(values: pd.Series) -> bool:
    return (pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            and bool(values.notna().all()))


def varying_axes(frame: pd.DataFrame) -> list[str]:
    """The config keys that differ between runs (not the seed), numeric ones first, by name.

    A key the config fills in from another setting is left out when it only follows an axis:
    when `masking.strategy` varies, its `masking.params.*` vary with it but are not axes of
    their own. Keys a spec varies together (a zip group) all stay: the report joins them.
    """
    if frame.empty:
        return []
    candidates = [c for c in frame.columns
                  if _is_config(c) and c != "seed" and frame[c].nunique(dropna=False) > 1]
    axes: list[str] = []
    for key in sorted(candidates, key=_implied):  # chosen settings before implied ones
        if axes and _implied(key) and frame.groupby(axes, dropna=False)[key].nunique(dropna=False).max() <= 1:
            continue
        axes.append(key)
    return sorted(axes, key=lambda k: (not _is_numeric(frame[k]), k))


# ----------------------------------------------------------------------------- the table
def _value_order(values: pd.Series) -> list:
    """Display order of an axis: numbers ascending, anything else as first seen (NaN last)."""
    if _is_numeric(values):
        return sorted(values.unique())
    return [v for v in pd.unique(values) if not pd.isna(v)]


def _rank(values: pd.Series, order: list) -> pd.Series:
    return values.map(lambda v: len(order) if pd.isna(v) else order.index(v))


def summary_table(frame: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """Per combination of the axes and per eval, over seeds: mean, std (ddof=1), n (runs with a
    value), the 95% bootstrap interval of the mean (ci_lo, ci_hi) and `vs_best`: 'best' (highest
    mean), 'within noise' of the best, 'below' it, or 'unknown' (one seed: noise cannot be judged).
    Then n, the runs of the setting.

    With no varying axis there is a single row, labelled by the study in a `study` column.
    """
    keys = list(axes) or ["study"]
    metrics = present_metrics(frame)
    rows, samples = [], []  # samples[i][name]: row i's per-seed values of an eval
    for setting, runs in frame.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, setting if isinstance(setting, tuple) else (setting,)))
        samples.append({})
        for name, (col, _) in metrics.items():
            values = runs[col].dropna().to_numpy(dtype=float)
            samples[-1][name] = values
            lo, hi = bootstrap_ci(values)
            row.update({f"{name}_mean": values.mean() if len(values) else np.nan,
                        f"{name}_std": values.std(ddof=1) if len(values) > 1 else np.nan,
                        f"{name}_n": len(values), f"{name}_ci_lo": lo, f"{name}_ci_hi": hi})
        row["n"] = len(runs)
        rows.append(row)
    table = pd.DataFrame(rows)
    for name in metrics:
        table.insert(table.columns.get_loc(f"{name}_ci_hi") + 1, f"{name}_vs_best",
                     _versus_best(table[f"{name}_mean"], [s[name] for s in samples]))
    if axes:
        orders = {a: _value_order(frame[a]) for a in axes}
        table = table.sort_values(axes, key=lambda col: _rank(col, orders[col.name]), kind="stable")
    return table.reset_index(drop=True)


def _versus_best(means: pd.Series, samples: list[np.ndarray]) -> list[str]:
    """Each setting against the one with the highest mean: best / within noise / below / unknown."""
    if means.isna().all():
        return [""] * len(means)
    best = int(means.reset_index(drop=True).idxmax())
    verdicts = []
    for i, mean in enumerate(means):
        if i == best:
            verdicts.append("best")
        elif pd.isna(mean):
            verdicts.append("")
        else:
            same = within_noise(samples[i], samples[best])
            verdicts.append("unknown" if same is None else "within noise" if same else "below")
    return verdicts


def _fmt_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    if isinstance(value, (float, np.floating)):
        return f"{value:g}"
    return str(value)


def _fmt_score(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return MISSING
    if n == 1 or pd.isna(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def _fmt_interval(lo: float, hi: float, n: int) -> str:
    """'[84.0, 85.0]'; a dash with fewer than two seeds (an interval of one value says nothing)."""
    return MISSING if n < 2 or pd.isna(lo) else f"[{lo:.1f}, {hi:.1f}]"


def _marked(cell: str, vs_best: str, n_rows: int) -> str:
    """The best setting in bold, one within seed noise of it with a dagger."""
    if n_rows < 2 or cell == MISSING:
        return cell
    return f"**{cell}**" if vs_best == "best" else f"{cell} †" if vs_best == "within noise" else cell


def format_markdown(table: pd.DataFrame, axes: list[str]) -> str:
    """A GitHub markdown table: the axes, then per eval 'mean ± std', its 95% bootstrap interval and
    n (runs with a value); the best setting of each eval in bold, those within seed noise of it
    marked †, explained in a footnote under the table."""
    keys = list(axes) or ["study"]
    names = [name for name in METRICS if f"{name}_mean" in table]
    header = keys + [h for name in names for h in (METRICS[name][1], "95% CI", "n")]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([" --- "] * len(keys) + [" ---: "] * (len(header) - len(keys))) + "|"]
    for row in table.to_dict("records"):
        cells = [_fmt_value(row[k]) for k in keys]
        for name in names:
            n = int(row[f"{name}_n"])
            score = _fmt_score(row[f"{name}_mean"], row[f"{name}_std"], n)
            cells += [_marked(score, row[f"{name}_vs_best"], len(table)),
                      _fmt_interval(row[f"{name}_ci_lo"], row[f"{name}_ci_hi"], n), str(n)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if len(table) > 1:
        lines += ["", "**Bold**: the setting with the highest mean. †: within seed noise of it, "
                  f"{NOISE_RULE}; a setting with one seed cannot be judged and gets no mark. "
                  "95% CI: percentile bootstrap of the mean over seeds."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the plot
def axis_label(key: str) -> str:
    return AXIS_LABELS.get(key, key)


def _levels(frame: pd.DataFrame, axes: list[str]) -> tuple[pd.Series, list[str]]:
    """Each run's label for the given axes (hue), and the labels in display order."""
    combos = frame[axes].drop_duplicates()
    for a in reversed(axes):  # stable sorts, last key first: lexicographic in axis order
        combos = combos.sort_values(a, key=lambda col: _rank(col, _value_order(frame[col.name])), kind="stable")

    def label(values) -> str:  # the legend's title names the axes
        return ", ".join(_fmt_value(v) for v in values)

    order = [label(list(v)) for v in combos.itertuples(index=False)]
    return frame[axes].apply(lambda r: label(list(r)), axis=1), order


def _zoom(ax, values: pd.Series) -> None:
    """y limits around the data, with room above for the value labels."""
    lo, hi = float(values.min()), float(values.max())
    span = max(hi - lo, 1.0)
    ax.set_ylim(max(0.0, lo - 0.3 * span), hi + 0.3 * span)


def _not_run(ax) -> None:
    ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.5")
    ax.set_xticks([])
    ax.set_yticks([])


def _bars(ax, data: pd.DataFrame, metric: str, x_ticks: list[str], colors, n_levels: int, small: bool) -> None:
    """Mean per (x, level) as bars, dodged by level; each run a dot; the mean written on top."""
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


def _lines(ax, data: pd.DataFrame, metric: str, x: str, x_order: list, colors, n_levels: int) -> None:
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
        ax.set_xticks(x_order, [_fmt_value(v) for v in x_order])
    if log:
        ax.set_xlim(lo / 2 ** (0.06 * span), hi * 2 ** (0.06 * span))
    else:
        ax.set_xlim(lo - 0.06 * span, hi + 0.06 * span)


def plot_study(frame: pd.DataFrame, axes: list[str], path: Path | str, title: str) -> None:
    """A panel per eval (fine-tune, linear probe, and k-NN when run) against the first axis (x).

    A numeric axis gives lines through the means, a categorical one bars; further axes
    split the runs into coloured groups (the legend). Each run is a dot.
    """
    data = frame.copy()
    x = axes[0] if axes else "study"
    numeric = bool(axes) and _is_numeric(data[x])
    x_order = _value_order(data[x])
    data["_x"] = _rank(data[x], x_order)  # a missing value goes last, on its own tick
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
    x_ticks = [_fmt_value(v) for v in x_order]
    n_slots = len(x_order) * (1 if numeric else n_levels)
    panel_w = 5.0 if numeric else min(max(4.2, 0.5 * n_slots + 1.6), 7.5)
    metrics = present_metrics(data)
    fig_w = len(metrics) * panel_w

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        fig, panels = plt.subplots(1, len(metrics), figsize=(fig_w, 4.6), layout="constrained")
        for ax, (metric, name) in zip(panels, metrics.values()):
            ax.set_title(f"{name} (%)")
            if data[metric].isna().all():
                _not_run(ax)
                continue
            if numeric:
                _lines(ax, data, metric, x, x_order, colors, n_levels)
            else:
                _bars(ax, data, metric, x_ticks, colors, n_levels, small=n_slots > 10)
                if max(map(len, x_ticks)) * len(x_ticks) > 6 * panel_w:  # long names: slant them
                    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
            _zoom(ax, data[metric].dropna())
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
        _save_png(fig, Path(path))


def _save_png(fig, path: Path) -> None:
    """Save through a temporary file in the same folder: readers never see half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=150)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- the report
def _setup_line(frame: pd.DataFrame) -> str:
    """'6 runs (seeds 0, 1) on <device>; linear probe on the cls feature, fine-tune on avgpool. ...'"""
    def distinct(*cols: str) -> str:  # the first column present, its values joined
        col = next((c for c in cols if c in frame), None)
        return ", ".join(_fmt_value(v) for v in pd.unique(frame[col])) if col else MISSING

    seeds = sorted(frame["seed"].unique()) if "seed" in frame else []
    if len(seeds) > 8:
        seed_text = f" ({len(seeds)} seeds)"
    elif seeds:
        seed_text = f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    else:
        seed_text = ""
    probe = f"on the {distinct('linear_probe_feature', 'evals.linear_probe.feature')} feature"
    finetune = f"on {distinct('finetune_feature', 'evals.finetune.feature')}"
    if frame["linear_probe_top1"].isna().all():
        probe = "not run"
    if frame["finetune_top1"].isna().all():
        finetune = "not run"
    knn = f", k-NN on the {distinct('evals.knn.feature')} feature" if "knn" in present_metrics(frame) else ""
    cells = ("mean ± std over seeds, the 95% bootstrap interval of the mean, and n, the runs with a result"
             if len(seeds) > 1 else "one run each")
    n = len(frame)
    return (f"{n} run{'s' if n != 1 else ''}{seed_text} on {distinct('device')}; "
            f"linear probe {probe}, fine-tune {finetune}{knn}. Cells: top-1 %, {cells}.")


def _join_zip_groups(frame: pd.DataFrame, axes: list[str], groups: list[list[str]]) -> tuple[pd.DataFrame, list[str]]:
    """Keys that vary together (a spec's zip group) read as one categorical axis: 'block, 0.5'."""
    for group in groups:
        keys = [k for k in group if k in axes]
        if len(keys) < 2:
            continue
        name = " / ".join(keys)
        frame = frame.copy()
        frame[name] = frame[keys].apply(lambda row: ", ".join(_fmt_value(v) for v in row), axis=1)
        axes = [name if k == keys[0] else k for k in axes if k not in keys[1:]]
    return frame, axes


def write_report(study_dir: Path | str, reports_root: Path | str = "reports",
                 description: str | None = None, paper: str | dict | None = None) -> dict:
    """Write runs.csv, table.csv, table.md and plot.png under reports_root/<study>/.

    When the study reproduces a paper's subtable (`paper`, 'mae:table1f' or {source, subtable};
    else the `paper` of its study.json), also comparison.md, .csv and .png (bench.analysis.compare); their
    paths come back as comparison_md, comparison_csv and comparison_png.
    """
    study_dir = Path(study_dir)
    study = study_dir.name
    manifest = read_study_manifest(study_dir)
    description = description or manifest.get("description")
    paper = paper or manifest.get("paper")
    runs = runs_frame(study_dir)
    if runs.empty:
        raise ConfigError(str(study_dir), "no finished runs (a run is finished when its result.json is complete)")
    frame, axes = _join_zip_groups(runs, varying_axes(runs), manifest.get("zip_groups", []))
    table = summary_table(frame, axes)
    out = Path(reports_root) / study
    paths = {"table_md": out / "table.md", "table_csv": out / "table.csv",
             "plot": out / "plot.png", "runs_csv": out / "runs.csv"}

    atomic_write_text(paths["runs_csv"], frame.to_csv(index=False))
    atomic_write_text(paths["table_csv"], table.to_csv(index=False))
    parts = [f"# {study}", description, format_markdown(table, axes).rstrip(), _setup_line(frame)]
    atomic_write_text(paths["table_md"], "\n\n".join(p for p in parts if p) + "\n")
    plot_study(frame, axes, paths["plot"], f"{study}\n{description}" if description else study)
    if paper:
        from bench.analysis.compare import write_comparison  # it builds on this module

        comparison = write_comparison(study_dir, reports_root, paper, runs=runs)
        paths.update({k: comparison[k] for k in ("comparison_md", "comparison_csv", "comparison_png")})
    return {**paths, "n_runs": len(frame), "table": table}
