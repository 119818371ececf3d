"""comparison.md: our study beside a paper subtable's numbers, as Markdown.

Per metric (fine-tune ft, linear probe lin): each setting's mean ± std, 95% interval and n beside
the paper's number and the delta; the best settings and Kendall's tau; our pairwise orderings
with their seed noise. Then the other numbers (FLOPs, wall-clock) relative to the paper's
baseline, and the paper's claims with their verdicts (bench.analysis.claims).
"""
from __future__ import annotations

import math

import pandas as pd

from bench.analysis.matching import METRICS, OTHER_NUMBERS, Comparison
from bench.papers import load_paper
from bench.analysis.stats import MAX_SEEDS, TEST_RULE
from bench.analysis.tables import MISSING, count, fmt_number, fmt_ratio, fmt_value, md_header, md_row


def ours_setup(runs: pd.DataFrame) -> str:
    """'12 runs, seeds 0, 1, 2: fashion_mnist, mae_vit_tiny_patch4, 4 epochs pre-training'."""
    def distinct(column: str) -> str:
        return ", ".join(fmt_value(v) for v in pd.unique(runs[column])) if column in runs else MISSING

    seeds = sorted(runs["seed"].unique()) if "seed" in runs else []
    seed_text = f", {len(seeds)} seeds" if len(seeds) > 8 else \
        f", seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}" if seeds else ""
    return (f"{count(len(runs), 'run')}{seed_text}: {distinct('data.name')}, {distinct('model.preset')}, "
            f"{distinct('pretrain.epochs')} epochs pre-training")


def _metric_section(comparison: Comparison, metric: str) -> list[str]:
    column, label = METRICS[metric]
    settings = comparison.settings
    if not any(len(s.ours(column)) for s in settings) and all(math.isnan(s.paper(metric)) for s in settings):
        return [f"## {label} ({metric})", "", "Not run by us, and not in the paper's subtable."]
    lines = [f"## {label} ({metric})", ""]
    lines += md_header(["setting", "ours", "95% CI", "n", "paper", "Δ ours − paper", "rank ours / paper"], "lrrrrrr")
    for s, row in zip(settings, comparison.table.to_dict("records")):
        n = row[f"{metric}_ours_n"]
        ours = MISSING if n == 0 else fmt_number(row[f"{metric}_ours_mean"]) + \
            ("" if n < 2 else f" ± {row[f'{metric}_ours_std']:.1f}")
        interval = MISSING if n < 2 else f"[{row[f'{metric}_ours_ci_lo']:.1f}, {row[f'{metric}_ours_ci_hi']:.1f}]"
        ranks = MISSING if math.isnan(row[f"{metric}_ours_rank"]) else \
            f"{row[f'{metric}_ours_rank']:.0f} / {row[f'{metric}_paper_rank']:.0f}"
        name = s.name + (" (paper's baseline)" if row["paper_baseline"] else "")
        lines.append(md_row([name, ours, interval, n if s.samples is not None else "not run",
                           fmt_number(row[f"{metric}_paper"]), fmt_number(row[f"{metric}_delta"], signed=True), ranks]))
    ranking = comparison.rankings[metric]
    lines.append("")
    if ranking.our_best is None:
        lines.append("- No setting has both our number and the paper's: orderings cannot be compared.")
    else:
        common = count(len(ranking.common), "setting")
        paper_best = ", ".join(s.label for s in ranking.paper_best)
        tied = "tied at " if len(ranking.paper_best) > 1 else ""
        verdict = "**same**" if ranking.best_matches else "**differs**"
        note = f" ({ranking.note})" if ranking.note else ""
        lines.append(f"- Best setting, over the {common} both have: ours **{ranking.our_best.label}** "
                     f"({ranking.our_best.mean(column):.1f}), the paper's **{paper_best}** "
                     f"({tied}{ranking.paper_best[0].paper(metric):.1f}): {verdict}{note}.")
        tau = "— (fewer than two settings)" if math.isnan(ranking.tau) else \
            f"**{ranking.tau:.2f}** (p = {_fmt_p(ranking.tau_p)})"
        lines.append(f"- Kendall's tau-b between our ordering and the paper's ({common}): {tau}.")
    pairs = [p for p in comparison.pairs if p.metric == metric]
    if pairs and all(p.resolved is None for p in pairs):
        lines += ["", "Our pairwise orderings: with one seed per setting, whether one is resolved cannot be judged."]
    elif pairs:
        lines += ["", "Our pairwise orderings, whether each is resolved (Holm-corrected p), and roughly how many "
                  "seeds per setting would resolve one that is not:", ""]
        lines += md_header(["ours", "Δ", "resolved (p)", "seeds to resolve", "the paper"], "lrlrl")
        for p in pairs:
            verdict = ("cannot judge (one seed)" if p.resolved is None
                       else f"{'resolved' if p.resolved else 'not resolved'} ({_fmt_p(p.p)})")
            seeds = MISSING if p.resolved is not False else \
                (f"> {MAX_SEEDS}" if p.seeds_needed is None else f"~{p.seeds_needed}")
            lines.append(md_row([f"{p.higher.label} > {p.lower.label}", f"{p.delta:.1f}", verdict, seeds,
                                 p.paper or MISSING]))
    return lines


def _other_numbers_section(comparison: Comparison, number: str) -> list[str]:
    _, what, our_unit, paper_unit = OTHER_NUMBERS[number]
    baseline = next((s for s in comparison.settings if s.point is not None and s.point.default), None)
    title = f"## {what}, relative to the paper's baseline" + (f" ({baseline.label})" if baseline else "")
    lines = [title, ""] + md_header(["setting", f"ours ({our_unit})", "ours ÷ baseline",
                                   f"paper ({paper_unit})", "paper ÷ baseline"], "lrrrr")
    for s, row in zip(comparison.settings, comparison.table.to_dict("records")):
        mean = row[f"{number}_ours_mean"]
        lines.append(md_row([s.name, MISSING if math.isnan(mean) else f"{mean:.3g}",
                           fmt_ratio(row[f"{number}_ours_rel"]), fmt_value(row[f"{number}_paper"]),
                           fmt_ratio(row[f"{number}_paper_rel"])]))
    return lines


def format_comparison(comparison: Comparison, study: str, runs: pd.DataFrame, description: str | None = None) -> str:
    """comparison.md."""
    sub = comparison.subtable
    paper_title = load_paper(sub.paper).title
    ours_only = [s.label for s in comparison.settings if s.point is None]
    not_run = [s.label for s in comparison.settings if s.point is not None and s.samples is None]
    in_both = len(sub.points) - len(not_run)
    matched = (f"Settings are matched by the config values of {', '.join(sub.axes)}: {in_both} of the paper's "
               f"{count(len(sub.points), 'setting')} {'is' if in_both == 1 else 'are'} in our study")
    matched += f"; not run by us: {', '.join(not_run)}" if not_run else ""
    matched += f"; ours only (no paper value): {', '.join(ours_only)}" if ours_only else ""
    if not sub.points:
        matched = "The paper gives no numbers for this ablation, only the claims below"
    metric_names = "; ".join(f"{k} = {v}" for k, v in (sub.setup.get("metrics") or {}).items())
    lines = [f"# {study}: ours vs {sub.label}", ""]
    if description:
        lines += [description, ""]
    lines += [f"**Paper**: {paper_title}, {sub.source}: {sub.title}. {sub.setup_text}; {metric_names}.", "",
              f"**Ours**: {ours_setup(runs)}.", "",
              "The scales differ (our data and model are not the paper's), so a delta (ours − paper) says little by "
              "itself: compare the orderings first (ranks, the best setting, Kendall's tau).", "",
              matched + "."]
    if not sub.plotted_values_given:
        lines += ["", "The paper gives this ablation as a plot: only the numbers and claims its text states are "
                  "here, not the plotted values."]
    lines += [f"\nNote: {note}" for note in sub.notes]
    if sub.scaled_by:
        lines += ["", f"Our {sub.axes[0]} matches the paper's as a fraction of {sub.scaled_by['key']} (the paper's: "
                  f"{sub.scaled_by['paper']:g}); the setting names are the paper's, our values are in backticks."]
    if comparison.pooled_axes:
        lines += ["", f"Our runs also vary {', '.join(comparison.pooled_axes)}, which the paper's subtable does not: "
                  "they are pooled within each setting."]
    for metric in METRICS:
        lines += [""] + _metric_section(comparison, metric)
    for number in (m for m in sub.metrics if m in OTHER_NUMBERS):
        lines += [""] + _other_numbers_section(comparison, number)
    if comparison.claims:
        lines += ["", "## The paper's claims", ""] + md_header(["claim", "check", "verdict", "detail"], "llll")
        for c in comparison.claims:
            check = MISSING if c.claim.check is None else ", ".join(
                f"{k}: {_fmt_check_value(v)}" for k, v in c.claim.check.items())
            lines.append(md_row([c.claim.text, check, f"**{c.verdict}**", c.detail]))
    lines += ["", f"Resolved: {TEST_RULE}; with one seed a difference cannot be judged. Seeds to resolve: per "
              "setting, for 80% power of a t-test at 0.05 / the pairs compared, at the observed spread, roughly. Kendall's tau-b's "
              "p: two-sided (scipy.stats.kendalltau). 95% CI: percentile bootstrap of the mean over seeds."]
    return "\n".join(lines) + "\n"


def _fmt_check_value(value) -> str:
    if isinstance(value, tuple):
        return ", ".join(fmt_value(v) for v in value)
    return fmt_value(value)


def _fmt_p(p: float) -> str:
    """A p-value to two significant digits ('< 0.001' below that)."""
    if math.isnan(p):
        return MISSING
    return "< 0.001" if p < 0.001 else f"{p:.2g}"
