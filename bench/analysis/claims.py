"""The paper's claims checked against our per-setting means.

A claim in a paper file (bench/papers/<paper>.yaml) may carry a machine check
(bench.papers.CHECK_KINDS): `monotone_increasing` (up to a setting), `argmax` (the best
setting is this one) or `above` (every setting's mean above a bound, on the paper's scale).
Each check gives a verdict: passes, fails, cannot judge (a setting we did not run, a drop
within seed noise, an absolute bound at another scale), or stated only (no machine check).
"""
from __future__ import annotations

import pandas as pd

from bench.analysis.matching import METRICS, ClaimCheck, Setting, numeric_axis
from bench.papers import Claim, Subtable, same_setting, same_value
from bench.analysis.stats import resolved, welch_p
from bench.analysis.tables import fmt_value

PASSES, FAILS, CANNOT_JUDGE, STATED_ONLY = "passes", "fails", "cannot judge", "stated only"


def at_paper_scale(runs: pd.DataFrame, sub: Subtable) -> bool:
    """Whether every run has the paper's setup in our config keys (the paper file's setup.config)."""
    wanted = sub.setup.get("config") or {}
    return bool(wanted) and all(key in runs and runs[key].map(lambda v: same_value(v, value)).all()
                                for key, value in wanted.items())


def check_claim(claim: Claim, settings: list[Setting], paper_scale: bool = True) -> ClaimCheck:
    """A claim's machine check against our per-setting means (see bench.papers.CHECK_KINDS).

    An absolute bound (kind `above`) is on the paper's scale: with runs at another scale
    (paper_scale False) it cannot be judged.
    """
    check = claim.check
    if check is None:
        return ClaimCheck(claim, STATED_ONLY, "no machine check")
    column, label = METRICS[check["metric"]]
    ran = [s for s in settings if len(s.ours(column))]
    if not ran:
        return ClaimCheck(claim, CANNOT_JUDGE, f"we have no {label}")
    if check["kind"] == "monotone_increasing":
        return _check_monotone(claim, ran, column, check.get("upto"))
    if check["kind"] == "argmax":
        return _check_argmax(claim, ran, column, check["at"])
    if check["kind"] == "above":
        lowest = min(ran, key=lambda s: s.mean(column))
        detail = f"lowest mean {lowest.mean(column):.1f} at {lowest.label}"
        if not paper_scale:
            return ClaimCheck(claim, CANNOT_JUDGE, f"{detail}; the bound is absolute, on the paper's scale, "
                                                   "and our runs are at another")
        return ClaimCheck(claim, PASSES if lowest.mean(column) > check["bound"] else FAILS, detail)
    raise ValueError(f"unknown check kind {check['kind']!r}")


def _check_monotone(claim: Claim, ran: list[Setting], column: str, upto) -> ClaimCheck:
    if not numeric_axis(ran):
        return ClaimCheck(claim, CANNOT_JUDGE, "the axis is not numeric")
    steps = sorted((s for s in ran if upto is None or s.matched_as[0] <= upto or same_value(s.matched_as[0], upto)),
                   key=lambda s: s.values[0])
    if len(steps) < 2:
        return ClaimCheck(claim, CANNOT_JUDGE, "fewer than two of our settings in the range")
    path = " → ".join(f"{s.mean(column):.1f}" for s in steps)
    drops, noisy, unknown = [], [], []
    for a, b in zip(steps, steps[1:]):
        if b.mean(column) > a.mean(column):
            continue
        verdict = resolved(welch_p(a.ours(column), b.ours(column)))
        same = None if verdict is None else not verdict
        text = f"{a.label} → {b.label}"
        (noisy if same else unknown if same is None else drops).append(text)
    if drops or unknown:
        detail = f"drops {'; '.join(drops + unknown)}" + (" (one seed: noise not judged)" if unknown else "")
        return ClaimCheck(claim, FAILS, f"{path}: {detail}")
    if noisy:
        return ClaimCheck(claim, CANNOT_JUDGE, f"{path}: drops not resolved at {'; '.join(noisy)}")
    return ClaimCheck(claim, PASSES, f"{path}: rises at every step")


def _check_argmax(claim: Claim, ran: list[Setting], column: str, at: tuple) -> ClaimCheck:
    target = next((s for s in ran if same_setting(s.matched_as, at)), None)
    at_text = ", ".join(fmt_value(v) for v in at)
    if target is None:
        return ClaimCheck(claim, CANNOT_JUDGE, f"we did not run {at_text}")
    best = max(ran, key=lambda s: s.mean(column))
    if best is target:
        return ClaimCheck(claim, PASSES, f"our best is {best.label} ({best.mean(column):.1f})")
    detail = f"our best is {best.label} ({best.mean(column):.1f}); {target.label} has {target.mean(column):.1f}"
    verdict = resolved(welch_p(target.ours(column), best.ours(column)))
    same = None if verdict is None else not verdict
    if same:
        return ClaimCheck(claim, CANNOT_JUDGE, detail + ", not resolved from it")
    return ClaimCheck(claim, FAILS, detail + (" (one seed: noise not judged)" if same is None else ""))

