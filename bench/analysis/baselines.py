"""A study's baselines, measured with its own eval recipe, data and seeds, and whether each setting
beats them.

    random_init   no pre-training: fine-tune from scratch, and linear probe / k-NN on the
                  method's randomly initialised encoder
    raw_pixels    a linear classifier (the probe's recipe) and k-NN on the raw pixels

Baseline runs are runs like any other (their config's `baseline` key names the kind); in a study's
frame they are the rows whose `baseline` is set. A setting "beats" a baseline when its mean is
higher and Welch's test against the baseline's seeds, Holm-corrected across the table's settings,
resolves the difference; a setting that does not is flagged ‡ in the table — the reader then
cannot tell its representation from what no pre-training (or the pixels) already give.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.analysis.frames import METRICS, present_metrics
from bench.analysis.stats import holm, resolved, welch_p
from bench.analysis.tables import MISSING, fmt_score, md_header, md_row
from bench.study.config import BASELINES

LABELS = {"random_init": "random init, no pre-training (fine-tune = from scratch)",  # one per BASELINES
          "raw_pixels": "raw pixels (linear probe recipe; k-NN)"}
REFERENCE = "random_init"  # the baseline every setting must beat, per eval


def split_baselines(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the study's settings, its baseline runs): rows with a `baseline` value are baselines."""
    if frame.empty or "baseline" not in frame or frame["baseline"].isna().all():
        return frame, frame.iloc[0:0]
    is_baseline = frame["baseline"].notna()
    settings = frame[~is_baseline].drop(columns="baseline").reset_index(drop=True)
    settings.attrs = dict(frame.attrs)
    return settings, frame[is_baseline].reset_index(drop=True)


def baseline_values(baselines: pd.DataFrame, kind: str, column: str) -> np.ndarray:
    if baselines.empty or column not in baselines:
        return np.array([])
    return baselines.loc[baselines["baseline"] == kind, column].dropna().to_numpy(dtype=float)


def versus_baseline(table_samples: list[dict], baselines: pd.DataFrame, metrics: dict) -> dict[str, list[str]]:
    """Per eval, each setting against the reference baseline: 'beats' / 'not above' / '' (no baseline
    or no values), by Welch's test Holm-corrected across the settings."""
    out = {}
    for name, (column, _) in metrics.items():
        reference = baseline_values(baselines, REFERENCE, column)
        if len(reference) == 0:
            out[name] = [""] * len(table_samples)
            continue
        p_values = [welch_p(s[name], reference) if len(s[name]) else None for s in table_samples]
        verdicts = []
        for sample, p in zip(table_samples, holm(p_values)):
            if not len(sample[name]):
                verdicts.append("")
            elif sample[name].mean() > reference.mean() and resolved(p):
                verdicts.append("beats")
            else:
                verdicts.append("not above")
        out[name] = verdicts
    return out


def _settings_against_reference(settings: pd.DataFrame, baselines: pd.DataFrame, axes: list[str]):
    """(labels, per-setting samples, metrics, per-eval verdicts) of the study's settings against the
    random-init baseline, grouped by `axes` (the study as one setting without them)."""
    keys = [a for a in axes if a in settings] or None
    groups = list(settings.groupby(keys, sort=False, dropna=False)) if keys else [(settings.attrs.get("study", "the study"), settings)]
    metrics = present_metrics(settings)
    samples = [{name: runs[col].dropna().to_numpy(dtype=float) if col in runs else np.array([])
                for name, (col, _) in metrics.items()} for _, runs in groups]
    labels = [", ".join(map(str, g if isinstance(g, tuple) else (g,))) for g, _ in groups]
    return labels, samples, metrics, versus_baseline(samples, baselines, metrics)


def margins(baselines: pd.DataFrame, against: tuple) -> list[str]:
    """Per eval, one line: each setting's margin over the random-init baseline's mean, and which
    settings beat it by a resolved margin (Welch, Holm-corrected across the settings); `against`
    is _settings_against_reference's answer."""
    labels, samples, metrics, all_verdicts = against
    lines = []
    for name, verdicts in all_verdicts.items():
        column, label = metrics[name]
        reference = baseline_values(baselines, REFERENCE, column)
        have = [i for i, v in enumerate(verdicts) if v]
        if not len(reference) or not have:
            continue
        deltas = [samples[i][name].mean() - reference.mean() for i in have]
        behind = [labels[i] for i in have if verdicts[i] != "beats"]
        verdict = ("every setting beats it by a resolved margin" if not behind else
                   f"not above it by a resolved margin: {'; '.join(behind)}")
        lines.append(f"- {label}: margin over random init {min(deltas):+.1f} to {max(deltas):+.1f} points; {verdict}.")
    return lines


def marks_footnote(baselines: pd.DataFrame, against: tuple) -> str:
    """The ‡ footnote, only when a setting is marked; its one-seed clause only when a setting or the
    reference baseline of a marked eval has a single seed (then nothing can be resolved)."""
    _, samples, metrics, all_verdicts = against
    marked = [name for name, verdicts in all_verdicts.items() if "not above" in verdicts]
    if not marked:
        return ""
    text = (f"‡: not above the {LABELS[REFERENCE].split(',')[0]} baseline of the same eval by a resolved margin "
            "(Welch's t-test, Holm-corrected across the settings)")
    single = any(len(baseline_values(baselines, REFERENCE, metrics[name][0])) == 1
                 or any(len(s[name]) == 1 for s in samples) for name in marked)
    return text + ("; with one seed on either side no margin can be resolved, so such a setting is marked."
                   if single else ".")


def format_baselines(baselines: pd.DataFrame, settings: pd.DataFrame | None = None,
                     axes: list[str] | None = None) -> str:
    """The baselines' table in Markdown (empty when the study has none); with the study's
    `settings` (its non-baseline runs) and `axes`, each eval's margins over random init below it."""
    if baselines.empty:
        return ""
    metrics = present_metrics(baselines)
    lines = ["Baselines, with the same eval recipe, data and seeds:", ""]
    lines += md_header(["baseline"] + [f"{label}" for _, label in metrics.values()] + ["n"], "l" + "r" * (len(metrics) + 1))
    for kind in BASELINES:
        runs = baselines[baselines["baseline"] == kind]
        if runs.empty:
            continue
        cells = [LABELS[kind]]
        for column, _ in metrics.values():
            values = runs[column].dropna().to_numpy(dtype=float) if column in runs else np.array([])
            cells.append(fmt_score(values.mean(), values.std(ddof=1) if len(values) > 1 else np.nan, len(values))
                         if len(values) else MISSING)
        lines.append(md_row(cells + [str(len(runs))]))
    if settings is not None and not settings.empty:
        against = _settings_against_reference(settings, baselines, list(axes or []))  # the tests, once
        lines += [""] + margins(baselines, against)
        footnote = marks_footnote(baselines, against)
        lines += ["", footnote] if footnote else []
    return "\n".join(lines) + "\n"


def reference_lines(baselines: pd.DataFrame) -> dict[str, list[tuple[str, float]]]:
    """Per result column, the baselines' means to draw as reference lines: [(label, mean)]."""
    out: dict[str, list[tuple[str, float]]] = {}
    for column, _ in METRICS.values():
        for kind in BASELINES:
            values = baseline_values(baselines, kind, column)
            if len(values):
                out.setdefault(column, []).append((kind.replace("_", " "), float(values.mean())))
    return out
