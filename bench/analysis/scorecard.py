"""The reproduction scorecard: how much of each paper's ablations holds at the scale we ran.

`mimbench scorecard` reads every committed comparison — each reports/<study>/runs.csv whose study's
spec names a paper subtable (its `paper:` key; the spec found under ablations/ by its `name`) —
recomputes the comparison from those runs exactly as the study's report did (bench.analysis.compare),
and scores it, per subtable and metric (fine-tune, linear probe):

  - the paper's pairwise orderings with a gap of at least 1 point, over the settings both have:
    reproduced (ours resolved, same order), reversed (ours resolved, opposite order) or not
    resolved (Welch's test, Holm-corrected over the metric's pairs, as in the report);
  - whether our best setting is the paper's best; Kendall's tau-b with its p-value;
  - the margin of our best setting over the random-init baseline (no pre-training) and over
    raw pixels, the same eval's means.

The totals on top sum the orderings over every row. Written to reports/scorecard.md and
reports/scorecard.csv; regenerated from the runs alone, never by hand.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import yaml

from bench.analysis.baselines import baseline_values, split_baselines
from bench.analysis.compare import compare
from bench.analysis.matching import METRICS, Comparison
from bench.analysis.tables import md_header, md_row
from bench.core.files import atomic_write_text
from bench.papers import SHORT_NAMES, parse_paper_ref, subtable

MIN_GAP = 1.0  # points: a paper ordering smaller than this is not scored (within the papers' noise)
PAPER_ORDER = ["mae", "beit", "simmim", "spark", "videomae"]
COUNTS = ["reproduced", "reversed", "not_resolved"]


def spec_papers(ablations_root: Path | str = "ablations") -> dict[str, str]:
    """Spec name -> its paper reference ('mae:table1f'), for every committed spec that names one."""
    out = {}
    for path in sorted(Path(ablations_root).rglob("*.yaml")):
        if path.name.startswith("_"):
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        if isinstance(raw, dict) and raw.get("name") and raw.get("paper"):
            out[raw["name"]] = ":".join(parse_paper_ref(raw["paper"]))
    return out


def study_paper(study: str, papers: dict[str, str]) -> tuple[str, str] | None:
    """(paper reference, profile) of a study named '<spec name>' or '<spec name>-<profile>'."""
    for name, ref in papers.items():
        if study == name:
            return ref, ""
        if study.startswith(name + "-"):
            return ref, study[len(name) + 1:]
    return None


def score(comparison: Comparison, baselines: pd.DataFrame, metric: str) -> dict:
    """One row of the scorecard: the comparison's orderings, best setting, tau and margins for `metric`."""
    column = METRICS[metric][0]
    ranking = comparison.rankings[metric]
    counts = dict.fromkeys(COUNTS, 0)
    for pair in comparison.pairs:
        if pair.metric != metric or pair.paper not in ("same order", "reversed"):
            continue
        if abs(pair.higher.paper(metric) - pair.lower.paper(metric)) < MIN_GAP:
            continue
        key = "not_resolved" if not pair.resolved else "reproduced" if pair.paper == "same order" else "reversed"
        counts[key] += 1
    ran = [s for s in comparison.settings if len(s.ours(column))]
    best = max((s.mean(column) for s in ran), default=math.nan)
    margins = {}
    for kind in ("random_init", "raw_pixels"):
        values = baseline_values(baselines, kind, column)
        margins[f"over_{kind}"] = best - values.mean() if len(values) else math.nan
    return {"metric": metric, "settings_in_common": len(ranking.common),
            "paper_orderings": sum(counts.values()), **counts,
            "best_matches": ranking.best_matches,
            "our_best": ranking.our_best.label if ranking.our_best else "",
            "paper_best": " / ".join(s.label for s in ranking.paper_best) or
                          ("not given" if all(math.isnan(s.paper(metric)) for s in comparison.settings) else "–"),
            "tau": ranking.tau, "tau_p": ranking.tau_p, "our_best_top1": best, **margins}


def scorecard(reports_root: Path | str = "reports", ablations_root: Path | str = "ablations") -> pd.DataFrame:
    """One row per (committed comparison, metric the paper gives), papers in PAPER_ORDER."""
    papers = spec_papers(ablations_root)
    rows = []
    for runs_csv in sorted(Path(reports_root).glob("*/runs.csv")):
        study = runs_csv.parent.name
        found = study_paper(study, papers)
        if found is None:
            continue
        ref, profile = found
        sub = subtable(*parse_paper_ref(ref))
        settings, baselines = split_baselines(pd.read_csv(runs_csv))
        comparison = compare(settings, sub)
        ours = [m for m in METRICS if METRICS[m][0] in settings and settings[METRICS[m][0]].notna().any()]
        for metric in (m for m in METRICS if m in sub.metrics or m in ours):
            rows.append({"paper": sub.paper, "subtable": sub.label, "study": study, "profile": profile or "paper",
                         **score(comparison, baselines, metric)})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["order"] = frame["paper"].map(lambda p: PAPER_ORDER.index(p) if p in PAPER_ORDER else len(PAPER_ORDER))
    return frame.sort_values(["order", "subtable", "study", "metric"], kind="stable").drop(columns="order").reset_index(drop=True)


def totals(frame: pd.DataFrame) -> pd.DataFrame:
    """Per paper and in all: the scored orderings and how many reproduced, reversed, stayed unresolved;
    best settings matched out of those compared."""
    rows = []
    groups = [(SHORT_NAMES.get(p, p), g) for p, g in frame.groupby("paper", sort=False)] + [("all", frame)]
    for name, group in groups:
        compared = group["best_matches"].dropna()
        rows.append({"paper": name, "comparisons": group["study"].nunique(),
                     "paper_orderings": int(group["paper_orderings"].sum()),
                     **{c: int(group[c].sum()) for c in COUNTS},
                     "best_matches": f"{int(compared.astype(bool).sum())} of {len(compared)}" if len(compared)
                     else "– (no paper number)"})
    return pd.DataFrame(rows)


def _num(value: float, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_scorecard(frame: pd.DataFrame) -> str:
    """scorecard.md: the totals, then one line per comparison and metric."""
    lines = ["# Reproduction scorecard", "",
             f"Every committed comparison with a paper, regenerated from its runs (`mimbench scorecard`). "
             f"An ordering is one of the paper's pairs of settings (both run by us) whose numbers differ by "
             f"at least {MIN_GAP:g} point: **reproduced** when our difference is resolved and in the same "
             "direction, **reversed** when resolved and opposite, otherwise **not resolved** (Welch's t-test, "
             "Holm-corrected over the metric's pairs, as in each report). Margins: our best setting's mean "
             "minus the baseline's mean, same eval, same data and seeds.", ""]
    if frame.empty:
        return "\n".join(lines + ["No committed comparison found.", ""])
    lines += ["## Totals", ""]
    total = totals(frame)
    lines += md_header(["paper", "comparisons", "orderings ≥1 pt", "reproduced", "reversed", "not resolved",
                        "best setting matches"], "lrrrrrr")
    for row in total.to_dict("records"):
        cells = [row["paper"], row["comparisons"], row["paper_orderings"], *(row[c] for c in COUNTS), row["best_matches"]]
        lines.append(md_row([f"**{c}**" if row["paper"] == "all" else str(c) for c in cells]))
    lines += ["", "## Per comparison", "",
              "ft = fine-tune top-1, lin = linear probe top-1; tau = Kendall's tau-b over the settings both "
              "have (p two-sided).", ""]
    lines += md_header(["subtable", "study", "eval", "settings", "orderings", "reproduced", "reversed",
                        "not resolved", "best (ours / paper)", "tau (p)", "best − scratch", "best − pixels"],
                       "lllrrrrrlrrr")
    for row in frame.to_dict("records"):
        if pd.isna(row["best_matches"]):
            best = "the paper gives no number" if row["paper_best"] == "not given" else "no setting in common"
        else:
            best = f"{'same' if row['best_matches'] else 'differs'}: {row['our_best']} / {row['paper_best']}"
        lines.append(md_row([row["subtable"], f"`{row['study']}`", row["metric"], str(row["settings_in_common"]),
                             str(row["paper_orderings"]), *(str(row[c]) for c in COUNTS),
                             best,
                             f"{_num(row['tau'], '.2f')} ({_num(row['tau_p'], '.2g')})",
                             _num(row["over_random_init"], "+.1f"), _num(row["over_raw_pixels"], "+.1f")]))
    return "\n".join(lines) + "\n"


def write_scorecard(reports_root: Path | str = "reports", ablations_root: Path | str = "ablations") -> dict:
    """reports/scorecard.md and reports/scorecard.csv; returns their paths and the frame."""
    frame = scorecard(reports_root, ablations_root)
    root = Path(reports_root)
    paths = {"scorecard_md": root / "scorecard.md", "scorecard_csv": root / "scorecard.csv"}
    atomic_write_text(paths["scorecard_md"], format_scorecard(frame))
    atomic_write_text(paths["scorecard_csv"], frame.to_csv(index=False))
    return {**paths, "frame": frame, "totals": totals(frame) if not frame.empty else pd.DataFrame()}
