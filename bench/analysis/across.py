"""Masking compared across methods: a collection's arms (bench.study.arms) side by side.

`mimbench report ablations/masking_across_methods.yaml --profile small` reads each arm's committed
runs (reports/<arm study>/runs.csv, as the scorecard does) and writes reports/<collection>-<profile>/:

    table.md / table.csv   per method and mask ratio (a row, from whichever arms hold its settings)
                           and strategy (a column): fine-tune and linear-probe top-1 over seeds,
                           and the margin over the arm's own
                           random-init baseline (no pre-training: fine-tune from scratch, the probe
                           on the untrained encoder), the same eval, data and seeds
    heatmap.png            those margins, method x strategy, a panel per eval
    winners                per row, the best strategy and whether it is resolved from each other
                           strategy (Welch's test, Holm-corrected over the row); then whether the
                           methods' winners differ by a resolved margin: two rows whose winners
                           differ, each winner resolved over the other's within its own row

An arm whose report is not there yet is listed as not run; the rest is reported without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.analysis.baselines import REFERENCE, baseline_values, split_baselines
from bench.analysis.frames import METRICS
from bench.analysis.stats import holm, resolved, welch_p
from bench.analysis.tables import MISSING, fmt_number, fmt_score, md_header, md_row
from bench.core.files import atomic_write_text
from bench.masking import list_strategies
from bench.papers import SHORT_NAMES

EVALS = ("finetune", "linear_probe")


def arm_frames(collection, reports_root: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """Every arm's runs in one long frame (one row per setting run: method, ratio, strategy, seed,
    the two top-1s, and the arm's random-init means), and the arm studies with no report yet."""
    rows, missing = [], []
    for order, study in enumerate(collection.arms):
        path = Path(reports_root) / study.name / "runs.csv"
        if not path.is_file():
            missing.append(study.name)
            continue
        settings, baselines = split_baselines(pd.read_csv(path))
        method = SHORT_NAMES.get(settings["method"].iloc[0], settings["method"].iloc[0]) if len(settings) else "?"
        for record in settings.to_dict("records"):
            row = {"arm": study.name, "order": order, "method": method, "ratio": float(record["masking.ratio"]),
                   "strategy": record["masking.strategy"], "seed": int(record["seed"])}
            for name in EVALS:
                column = METRICS[name][0]
                row[name] = record.get(column, np.nan)
                scratch = baseline_values(baselines, REFERENCE, column)
                row[f"{name}_scratch"] = list(scratch)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        twice = frame[frame.duplicated(["arm", "strategy", "ratio", "seed"], keep=False)]
        if len(twice):  # an arm that varies more than the mask would be averaged over its other keys
            raise ValueError(f"arm {twice['arm'].iloc[0]} has two runs of {twice['strategy'].iloc[0]} at "
                             f"{twice['ratio'].iloc[0]:g}, seed {twice['seed'].iloc[0]}: an arm may vary the "
                             "masking only (masking.strategy, ratio, params)")
    return frame, missing


def _row_label(method: str, ratio: float) -> str:
    return f"{method} {ratio:g}"


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, ratio, strategy): mean, sd, seeds and the margin over random init, per eval."""
    out = []
    order = {s: i for i, s in enumerate(list_strategies(video=True))}
    # a method's arms share its rows (Table 1f's random/block/grid and another arm's walker/coarse);
    # only when two arms hold the same setting do its rows name their arm, so none hides the other
    clash = frame.groupby(["method", "ratio", "strategy"])["arm"].nunique()
    clashing = {m for (m, _, _), n in clash.items() if n > 1}
    for (arm_order, arm, method, ratio, strategy), group in frame.groupby(["order", "arm", "method", "ratio", "strategy"]):
        label = _row_label(method, ratio) + (f" ({arm})" if method in clashing else "")
        row = {"method": method, "ratio": ratio, "row": label, "strategy": strategy,
               "order": arm_order, "strategy_order": order.get(strategy, len(order)), "seeds": len(group)}
        for name in EVALS:
            values = group[name].dropna().to_numpy(dtype=float)
            scratch = np.asarray(group[f"{name}_scratch"].iloc[0], dtype=float)
            row[f"{name}_mean"] = values.mean() if len(values) else np.nan
            row[f"{name}_sd"] = values.std(ddof=1) if len(values) > 1 else np.nan
            row[f"{name}_scratch"] = scratch.mean() if len(scratch) else np.nan
            row[f"{name}_margin"] = row[f"{name}_mean"] - row[f"{name}_scratch"]
            row[f"{name}_values"] = list(values)
        out.append(row)
    if not out:
        return pd.DataFrame()
    table = pd.DataFrame(out)
    table["order"] = table.groupby("row")["order"].transform("min")  # a row sits where its first arm does
    return table.sort_values(["order", "ratio", "strategy_order"]).reset_index(drop=True)


def winners(table: pd.DataFrame, name: str) -> list[dict]:
    """Per row (method at a ratio) with two strategies or more: the best strategy by the mean, the
    runner-up, and whether the best is resolved from every other strategy of the row."""
    out = []
    for label, group in table.groupby("row", sort=False):
        group = group.dropna(subset=[f"{name}_mean"]).sort_values(f"{name}_mean", ascending=False)
        if len(group) < 2:
            continue
        best = group.iloc[0]
        p_values = holm([welch_p(best[f"{name}_values"], other[f"{name}_values"]) for _, other in group.iloc[1:].iterrows()])
        out.append({"row": label, "method": best["method"], "winner": best["strategy"],
                    "runner_up": group.iloc[1]["strategy"], "gap": best[f"{name}_mean"] - group.iloc[1][f"{name}_mean"],
                    "resolved_over": [s for s, p in zip(group.iloc[1:]["strategy"], p_values) if resolved(p)],
                    "others": list(group.iloc[1:]["strategy"])})
    return out


def _beats(table: pd.DataFrame, row: str, a: str, b: str, name: str) -> bool:
    """In `row`, strategy a's mean above b's, resolved by Welch's test (uncorrected: one planned pair)."""
    cells = table[table["row"] == row].set_index("strategy")
    if a not in cells.index or b not in cells.index:
        return False
    p = welch_p(cells.loc[a, f"{name}_values"], cells.loc[b, f"{name}_values"])
    return bool(cells.loc[a, f"{name}_mean"] > cells.loc[b, f"{name}_mean"] and resolved(p))


def depends_on_method(table: pd.DataFrame, found: list[dict], name: str) -> list[str]:
    """Pairs of rows whose winners differ, each winner resolved over the other's within its own row."""
    out = []
    for i, one in enumerate(found):
        for two in found[i + 1:]:
            if one["winner"] != two["winner"] and _beats(table, one["row"], one["winner"], two["winner"], name) \
                    and _beats(table, two["row"], two["winner"], one["winner"], name):
                out.append(f"{one['row']} prefers {one['winner']} over {two['winner']}, {two['row']} the reverse")
    return out


def _markdown(collection, profile, table: pd.DataFrame, missing: list[str]) -> str:
    title = collection.description or collection.name
    lines = [f"# {title}{f' ({profile} profile)' if profile else ''}", "",
             f"Arms: {', '.join(s.name for s in collection.arms)} (each its own study and report; "
             f"`{collection.path}`). Cells: top-1 over seeds (mean ± sd), and in brackets the margin over "
             "the arm's random-init baseline (no pre-training), same eval, data and seeds.", ""]
    if missing:
        lines += [f"Not run yet (no reports/<study>/runs.csv): {', '.join(missing)}.", ""]
    if table.empty:
        return "\n".join(lines + ["No arm has finished runs yet."]) + "\n"
    strategies = list(table.sort_values("strategy_order")["strategy"].drop_duplicates())
    rows = list(dict.fromkeys(table["row"]))
    for name in EVALS:
        lines += [f"## {METRICS[name][1]}", "", *md_header(["method, ratio", *strategies, "random init"],
                                                          "l" + "r" * (len(strategies) + 1))]
        for label in rows:
            cells = table[table["row"] == label].set_index("strategy")
            row_cells = [f"{fmt_score(c[f'{name}_mean'], c[f'{name}_sd'], c['seeds'])} "
                         f"({fmt_number(c[f'{name}_margin'], signed=True)})" if s in cells.index else MISSING
                         for s in strategies for c in [cells.loc[s] if s in cells.index else None]]
            lines.append(md_row([label, *row_cells, fmt_number(cells.iloc[0][f"{name}_scratch"])]))
        found = winners(table, name)
        lines += ["", f"Winners ({METRICS[name][1]}):", ""]
        for w in found:
            beaten = ("resolved over every other strategy" if len(w["resolved_over"]) == len(w["others"])
                      else f"resolved over {', '.join(w['resolved_over'])}" if w["resolved_over"]
                      else "resolved over none")
            lines.append(f"- {w['row']}: **{w['winner']}**, {fmt_number(w['gap'])} points above {w['runner_up']}; "
                         f"{beaten} (Welch, Holm over the row).")
        depends = depends_on_method(table, found, name)
        distinct = sorted({w["winner"] for w in found})
        verdict = ("fewer than two rows compare strategies yet" if len(found) < 2 else
                   "the winning strategy depends on the method, by a resolved margin: " + "; ".join(depends)
                   if depends else f"{distinct[0]} wins in every row" if len(distinct) == 1 else
                   f"the winners differ ({', '.join(distinct)}), but no two rows' winners are resolved from "
                   "each other within both rows")
        lines += ["", f"Across methods: {verdict}.", ""]
    return "\n".join(lines) + "\n"


def plot_heatmap(table: pd.DataFrame, path: Path | str, title: str) -> None:
    """Method x strategy margins over random init, a panel per eval (diverging colours at 0)."""
    import matplotlib.pyplot as plt
    from bench.analysis.plots import save_png

    strategies = list(table.sort_values("strategy_order")["strategy"].drop_duplicates())
    rows = list(dict.fromkeys(table["row"]))
    fig, axes = plt.subplots(1, len(EVALS), figsize=(2.2 + 1.1 * len(strategies) * len(EVALS), 1.2 + 0.5 * len(rows)),
                             squeeze=False, layout="constrained")
    grids = {name: table.pivot(index="row", columns="strategy", values=f"{name}_margin").reindex(index=rows,
                                                                                              columns=strategies)
             for name in EVALS}
    limit = max(1.0, float(np.nanmax([np.nanmax(np.abs(g.to_numpy(dtype=float))) for g in grids.values()])))
    for ax, name in zip(axes[0], EVALS):
        values = grids[name].to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=plt.get_cmap("RdBu").with_extremes(bad="#dddddd"),
                          vmin=-limit, vmax=limit, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, "not run" if np.isnan(value) else f"{value:+.1f}", ha="center", va="center",
                    fontsize=7 if np.isnan(value) else 9, color="#555555" if np.isnan(value) else
                    "white" if abs(value) > 0.6 * limit else "black")
        ax.set_xticks(range(len(strategies)), strategies)
        ax.set_yticks(range(len(rows)), rows if ax is axes[0][0] else [""] * len(rows))
        ax.set_title(f"{METRICS[name][1]}\nminus random init (points)", fontsize=10)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="top-1 margin (points)")
    fig.suptitle(title, fontsize=11)
    save_png(fig, path)


def write_across_report(collection, profile: str | None, reports_root: Path | str = "reports") -> dict:
    """Write reports/<collection>[-<profile>]/{table.md, table.csv, heatmap.png}; their paths."""
    frame, missing = arm_frames(collection, reports_root)
    table = summary(frame) if not frame.empty else pd.DataFrame()
    out_dir = Path(reports_root) / collection.study_name(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table_md": out_dir / "table.md", "table_csv": out_dir / "table.csv", "heatmap": out_dir / "heatmap.png"}
    atomic_write_text(paths["table_md"], _markdown(collection, profile, table, missing))
    columns = (["method", "ratio", "strategy"] + [f"{n}_{k}" for n in EVALS for k in ("mean", "sd", "scratch", "margin")]
               + ["seeds"])  # the keys first, then the metrics: as a study's table.csv (the site index reads it so)
    atomic_write_text(paths["table_csv"], (table[columns] if not table.empty else pd.DataFrame(columns=columns))
                      .to_csv(index=False, float_format="%.4g"))
    if not table.empty:
        plot_heatmap(table, paths["heatmap"], collection.description or collection.name)
    else:
        paths["heatmap"] = None
    return paths
