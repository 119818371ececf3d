"""Reports: tables and plots from a study's finished runs.

    reports/<study>/
        runs.csv    one row per finished run: its flattened config and its result
        table.csv   one row per setting of the varying axes, per eval: mean, std, n and the 95%
                    bootstrap interval over seeds, and whether it is the best, resolved below it, or not
                    resolved from it (with the Holm-corrected p of Welch's test)
        table.md    the same table in markdown, with the study's description and setup
        plot.png    fine-tune and linear probe top-1 (and k-NN, when run) against the varying axis
        comparison.md / .csv / .png   when the study names the paper subtable it reproduces (bench.analysis.compare)
        index.html  the same as a web page, with every run folder and curves.png (bench.analysis.html),
                    and reports/index.html, the index of every study

The runs and their axes come from bench.analysis.frames, the picture from bench.analysis.plots,
the cells' text from bench.analysis.tables; this module summarises over seeds and writes the files.

Each setting is tested against the best one (bench.analysis.stats: Welch's t-test, Holm's
correction across the table's comparisons); the table marks those not resolved from the best.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.baselines import format_baselines, reference_lines, split_baselines, versus_baseline
from bench.analysis.compare import write_comparison
from bench.analysis.frames import (METRICS, join_zip_groups, present_metrics, runs_frame, value_order, value_rank,
                                   varying_axes)
from bench.analysis.plots import plot_study
from bench.analysis.stats import TEST_RULE, bootstrap_ci, holm, resolved, welch_p
from bench.analysis.tables import MISSING, fmt_interval, fmt_score, fmt_value, marked, md_header, md_row
from bench.core.errors import ConfigError
from bench.core.files import atomic_write_text
from bench.launch.store import read_study_manifest


# ----------------------------------------------------------------------------- the table
def summary_table(frame: pd.DataFrame, axes: list[str], baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per combination of the axes and per eval, over seeds: mean, std (ddof=1), n (runs with a
    value), the 95% bootstrap interval of the mean (ci_lo, ci_hi) and `vs_best`: 'best' (highest
    mean), 'not resolved' from the best, 'below' it (resolved), or 'unknown' (one seed: cannot be
    judged), with `p_vs_best`, the Holm-corrected p of Welch's test against the best.
    Then n, the runs of the setting. With `baselines` (the study's baseline runs), per eval also
    `vs_baseline`: 'beats' the random-init baseline by a resolved margin, or 'not above' it.

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
        verdicts, p_values = _versus_best(table[f"{name}_mean"], [s[name] for s in samples])
        at = table.columns.get_loc(f"{name}_ci_hi") + 1
        table.insert(at, f"{name}_vs_best", verdicts)
        table.insert(at + 1, f"{name}_p_vs_best", p_values)
    if baselines is not None and not baselines.empty:
        for name, verdicts in versus_baseline(samples, baselines, metrics).items():
            table.insert(table.columns.get_loc(f"{name}_p_vs_best") + 1, f"{name}_vs_baseline", verdicts)
    if axes:
        orders = {a: value_order(frame[a]) for a in axes}
        table = table.sort_values(axes, key=lambda col: value_rank(col, orders[col.name]), kind="stable")
    return table.reset_index(drop=True)


def _versus_best(means: pd.Series, samples: list[np.ndarray]) -> tuple[list[str], list[float]]:
    """Each setting against the one with the highest mean — best / not resolved / below / unknown
    (one seed) — and the Holm-corrected p-value of Welch's test against the best (nan where none)."""
    if means.isna().all():
        return [""] * len(means), [np.nan] * len(means)
    best = int(means.reset_index(drop=True).idxmax())
    others = [i for i, mean in enumerate(means) if i != best and not pd.isna(mean)]
    adjusted = dict(zip(others, holm([welch_p(samples[i], samples[best]) for i in others])))
    verdicts, p_values = [], []
    for i, mean in enumerate(means):
        p = adjusted.get(i)
        p_values.append(np.nan if p is None else p)
        if i == best:
            verdicts.append("best")
        elif pd.isna(mean):
            verdicts.append("")
        else:
            verdict = resolved(p)
            verdicts.append("unknown" if verdict is None else "below" if verdict else "not resolved")
    return verdicts, p_values


def format_markdown(table: pd.DataFrame, axes: list[str]) -> str:
    """A GitHub markdown table: the axes, then per eval 'mean ± std', its 95% bootstrap interval and
    n (runs with a value); the best setting of each eval in bold, those within seed noise of it
    marked †, explained in a footnote under the table."""
    keys = list(axes) or ["study"]
    names = [name for name in METRICS if f"{name}_mean" in table]
    header = keys + [h for name in names for h in (METRICS[name][1], "95% CI", "n")]
    lines = md_header(header, "l" * len(keys) + "r" * (len(header) - len(keys)))
    for row in table.to_dict("records"):
        cells = [fmt_value(row[k]) for k in keys]
        for name in names:
            n = int(row[f"{name}_n"])
            score = fmt_score(row[f"{name}_mean"], row[f"{name}_std"], n)
            if row.get(f"{name}_vs_baseline") == "not above":
                score += " ‡"
            cells += [marked(score, row[f"{name}_vs_best"], len(table)),
                      fmt_interval(row[f"{name}_ci_lo"], row[f"{name}_ci_hi"], n), str(n)]
        lines.append(md_row(cells))
    if len(table) > 1:
        lines += ["", "**Bold**: the setting with the highest mean. †: not resolved from it by "
                  f"{TEST_RULE}; a setting with one seed cannot be judged and gets no mark. "
                  "95% CI: percentile bootstrap of the mean over seeds."]
    return "\n".join(lines) + "\n"


def setup_line(frame: pd.DataFrame) -> str:
    """'6 runs (seeds 0, 1) on <device>; linear probe on the cls feature, fine-tune on avgpool. ...'"""
    def distinct(*cols: str) -> str:  # the first column present, its values joined
        col = next((c for c in cols if c in frame), None)
        return ", ".join(fmt_value(v) for v in pd.unique(frame[col])) if col else MISSING

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
            f"linear probe {probe}, fine-tune {finetune}{knn}. Cells: top-1 %, {cells}."
            + code_versions_line(frame) + not_in_spec_line(frame))


def code_versions_line(frame: pd.DataFrame) -> str:
    """' The runs come from 2 code versions: …' when they do (mimbench version and git commit)."""
    cols = [c for c in ("mimbench_version", "git_commit") if c in frame]
    if not cols:
        return ""
    def short(value) -> str:  # a git commit to 7 hex digits, "-dirty" kept
        head, dirty, _ = str(value).partition("-dirty")
        return (head[:7] if len(head) == 40 else head) + ("-dirty" if dirty else "")
    versions = sorted({" ".join(short(v) for v in row if isinstance(v, str)) or MISSING
                       for row in frame[cols].itertuples(index=False)})
    if len(versions) < 2:
        return ""
    return f" The runs come from {len(versions)} code versions: {'; '.join(versions)}."


def not_in_spec_line(frame: pd.DataFrame) -> str:
    """' Not in this spec (left out): …' for finished runs the spec's current grid no longer has."""
    left_out = frame.attrs.get("not_in_spec") or []
    if not left_out:
        return ""
    shown = ", ".join(left_out[:10]) + (f" and {len(left_out) - 10} more" if len(left_out) > 10 else "")
    return f" Not in this spec (left out): {len(left_out)} finished run{'s' if len(left_out) != 1 else ''}, {shown}."


# ----------------------------------------------------------------------------- the report
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
    runs, baselines = split_baselines(runs_frame(study_dir))
    if runs.empty:
        raise ConfigError(str(study_dir), "no finished runs (a run is finished when its result.json is complete)")
    frame, axes = join_zip_groups(runs, varying_axes(runs), manifest.get("zip_groups", []))
    table = summary_table(frame, axes, baselines)
    out = Path(reports_root) / study
    paths = {"table_md": out / "table.md", "table_csv": out / "table.csv",
             "plot": out / "plot.png", "runs_csv": out / "runs.csv"}

    every_run = frame if baselines.empty else pd.concat([frame, baselines], ignore_index=True)
    atomic_write_text(paths["runs_csv"], every_run.to_csv(index=False))
    atomic_write_text(paths["table_csv"], table.to_csv(index=False))
    parts = [f"# {study}", description, format_markdown(table, axes).rstrip(), format_baselines(baselines, frame, axes).rstrip(),
             setup_line(frame)]
    atomic_write_text(paths["table_md"], "\n\n".join(p for p in parts if p) + "\n")
    plot_study(frame, axes, paths["plot"], f"{study}\n{description}" if description else study,
               reference_lines(baselines))
    if paper:
        comparison = write_comparison(study_dir, reports_root, paper, runs=runs, baselines=baselines)
        paths.update({k: comparison[k] for k in ("comparison_md", "comparison_csv", "comparison_png")})
    from bench.analysis.html import write_study_html  # imported here: it renders this module's tables
    paths.update(write_study_html(study_dir, Path(reports_root), frame, axes, table, baselines, description, paths))
    return {**paths, "n_runs": len(frame), "table": table}
