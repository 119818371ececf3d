"""A study's finished runs as one pandas frame, and which config keys vary between them.

    runs_frame(study_dir)     one row per finished run: run_id, study, the config as dotted keys, the results
    varying_axes(frame)       the config keys that differ between runs (the seed aside)
    join_zip_groups(...)      keys a spec varies together, read as one axis

A run counts when its result.json is complete (bench.launch.store); half-written runs are
skipped, and so are finished runs that are not in the spec's current grid (study.json, written
at each launch): their folders are listed in `frame.attrs["not_in_spec"]` for the report to name. Config columns are `seed`, `method` (the schema's top-level keys) and the dotted keys
('masking.ratio'); result columns have no dot. Nested result values (the per-eval details)
stay in result.json. The axes leave out the keys a setting implies (a masking strategy's
params, a model preset's widths and depths) when they only follow it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bench.analysis.tables import fmt_value
from bench.launch.store import iter_runs, read_result, read_study_manifest
from bench.study.config import SCHEMA
from bench.study.run_ids import run_id, with_added_later

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on 10k configs

METRICS = {"finetune": ("finetune_top1", "fine-tune top-1"),
           "linear_probe": ("linear_probe_top1", "linear probe top-1"),
           "knn": ("knn_top1", "k-NN top-1")}
OPTIONAL_METRICS = ("knn",)  # shown only when some run has a value
TOP_LEVEL_KEYS = frozenset(k for k, v in SCHEMA.items() if not isinstance(v, dict))  # seed, method


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'masking': {'ratio': 0.75}} -> {'masking.ratio': 0.75}, for a frame's columns: an empty
    dict (a strategy without params) gives no column, a list becomes its JSON text (hashable,
    so pandas can group by it).
    """
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def runs_frame(study_dir: Path | str) -> pd.DataFrame:
    """One row per finished run: run_id, study, seed, the config's columns (sorted), the evals'
    top-1 columns, then the other scalar results (sorted); in the spec's order (study.json)."""
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
        row = flatten_config(config)
        row.update({k: v for k, v in result.items() if not isinstance(v, (dict, list))})
        rows.append((run_id(config), row))
    spec_runs = read_study_manifest(study_dir).get("runs")
    not_in_spec = []
    if spec_runs:  # only the runs of the spec's current grid (as last launched) count
        wanted = set(spec_runs)
        def in_spec(rid: str, row: dict) -> bool:  # by today's id of its config, or its folder's
            return rid in wanted or row.get("run_id") in wanted
        not_in_spec = sorted(row["run_id"] for rid, row in rows if not in_spec(rid, row))
        rows = [(rid, row) for rid, row in rows if in_spec(rid, row)]
    frame = pd.DataFrame(_current_runs(rows))
    frame.attrs["not_in_spec"] = not_in_spec
    if frame.empty:
        return frame
    # the spec's order (from the launch's study.json), so categories read as the spec lists them
    spec_order = {rid: i for i, rid in enumerate(spec_runs or [])}
    position = frame["run_id"].map(lambda rid: spec_order.get(rid, len(spec_order)))
    frame = frame.iloc[position.argsort(kind="stable")].reset_index(drop=True)
    metrics = [col for col, _ in METRICS.values() if col in frame]
    for col in metrics:  # None (eval disabled) -> NaN
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    config_cols = sorted(c for c in frame.columns if is_config(c) and c != "seed")
    first = ["run_id", "study"] + (["seed"] if "seed" in frame else [])
    rest = sorted(c for c in frame.columns if c not in set(first) | set(config_cols) | set(metrics))
    frame = frame[first + config_cols + metrics + rest]
    frame.attrs["not_in_spec"] = not_in_spec
    return frame


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


def is_config(column: str) -> bool:
    """A config column: a top-level key of the schema (seed, method) or a dotted one."""
    return column in TOP_LEVEL_KEYS or "." in column


def is_implied(key: str) -> bool:
    """Keys that the config fills in from another setting: strategy and target params, preset numbers."""
    return (key.startswith(("masking.params.", "pretrain.target_params."))
            or (key.startswith("model.") and key != "model.preset"))


def is_numeric(values: pd.Series) -> bool:
    """Numbers (not booleans), none missing."""
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
                  if is_config(c) and c != "seed" and frame[c].nunique(dropna=False) > 1]
    axes: list[str] = []
    for key in sorted(candidates, key=is_implied):  # chosen settings before implied ones
        if axes and is_implied(key) and frame.groupby(axes, dropna=False)[key].nunique(dropna=False).max() <= 1:
            continue
        axes.append(key)
    return sorted(axes, key=lambda k: (not is_numeric(frame[k]), k))


def value_order(values: pd.Series) -> list:
    """Display order of an axis: numbers ascending, anything else as first seen (NaN last)."""
    if is_numeric(values):
        return sorted(values.unique())
    return [v for v in pd.unique(values) if not pd.isna(v)]


def value_rank(values: pd.Series, order: list) -> pd.Series:
    """Each value's position in `order`; a missing value after all of them."""
    return values.map(lambda v: len(order) if pd.isna(v) else order.index(v))


def join_zip_groups(frame: pd.DataFrame, axes: list[str], groups: list[list[str]]) -> tuple[pd.DataFrame, list[str]]:
    """Keys that vary together (a spec's zip group) read as one categorical axis: 'block, 0.5'."""
    for group in groups:
        keys = [k for k in group if k in axes]
        if len(keys) < 2:
            continue
        name = " / ".join(keys)
        frame = frame.copy()
        frame[name] = frame[keys].apply(lambda row: ", ".join(fmt_value(v) for v in row), axis=1)
        axes = [name if k == keys[0] else k for k in axes if k not in keys[1:]]
    return frame, axes
