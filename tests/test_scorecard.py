"""The scorecard counts the paper's orderings (gap >= 1 point) that our runs reproduce, reverse or
cannot resolve, from the committed runs.csv of each comparison, and covers every committed one."""
from pathlib import Path

import pandas as pd
import pytest

from bench.analysis.scorecard import scorecard, study_paper, spec_papers, totals
from bench.cli import main

REPO = Path(__file__).resolve().parent.parent
TABLE1C = "mae_table1c_mask_token-small"  # paper: ft 84.2 (w/ [M]) vs 84.9 (gap < 1); lin 59.6 vs 73.5


def write_study(root: Path, study: str, lin_with: list[float], lin_without: list[float]) -> None:
    """A copy of the committed Table 1c runs with the linear-probe results replaced."""
    runs = pd.read_csv(REPO / "reports" / TABLE1C / "runs.csv")
    runs["study"] = study
    settings = runs["baseline"].isna()
    for flag, values in ((True, lin_with), (False, lin_without)):
        rows = runs.index[settings & (runs["model.mask_token_in_encoder"] == flag)]
        assert len(rows) == len(values) == 3
        runs.loc[rows, "linear_probe_top1"] = values
    (root / study).mkdir(parents=True)
    runs.to_csv(root / study / "runs.csv", index=False)


@pytest.mark.parametrize("lin_with,lin_without,verdict", [
    ([60.0, 60.1, 59.9], [70.0, 70.1, 69.9], "reproduced"),   # w/o [M] resolved above, as the paper
    ([70.0, 70.1, 69.9], [60.0, 60.1, 59.9], "reversed"),     # resolved, the other way
    ([60.0, 70.0, 65.0], [61.0, 71.0, 66.0], "not_resolved"),  # the paper's direction, within the noise
])
def test_an_ordering_is_reproduced_reversed_or_not_resolved(tmp_path, lin_with, lin_without, verdict):
    write_study(tmp_path, f"{TABLE1C}", lin_with, lin_without)
    frame = scorecard(tmp_path, REPO / "ablations")
    lin = frame[frame["metric"] == "lin"].iloc[0]
    assert lin["paper_orderings"] == 1
    assert {c: lin[c] for c in ("reproduced", "reversed", "not_resolved")} == \
        {c: int(c == verdict) for c in ("reproduced", "reversed", "not_resolved")}
    assert bool(lin["best_matches"]) == (verdict != "reversed")
    baseline = pd.read_csv(tmp_path / TABLE1C / "runs.csv").query("baseline == 'random_init'")["linear_probe_top1"]
    assert lin["over_random_init"] == pytest.approx(max(sum(lin_with), sum(lin_without)) / 3 - baseline.mean())
    ft = frame[frame["metric"] == "ft"].iloc[0]
    assert ft["paper_orderings"] == 0  # the paper's 84.2 vs 84.9 is under a point: not scored


def test_totals_sum_the_rows_and_studies_without_a_paper_are_left_out(tmp_path):
    write_study(tmp_path, TABLE1C, [60.0, 60.1, 59.9], [70.0, 70.1, 69.9])
    write_study(tmp_path, "mae_table1c_mask_token-small_long", [70.0, 70.1, 69.9], [60.0, 60.1, 59.9])
    write_study(tmp_path, "quickstart", [60.0, 60.1, 59.9], [70.0, 70.1, 69.9])  # its spec names no paper
    frame = scorecard(tmp_path, REPO / "ablations")
    assert sorted(frame["study"].unique()) == [TABLE1C, "mae_table1c_mask_token-small_long"]
    assert set(frame["profile"]) == {"small", "small_long"}
    every = totals(frame).set_index("paper").loc["all"]
    assert (every["paper_orderings"], every["reproduced"], every["reversed"], every["not_resolved"]) == (2, 1, 1, 0)


def test_the_command_prints_the_totals_and_writes_the_page(tmp_path, capsys):
    write_study(tmp_path, TABLE1C, [60.0, 60.1, 59.9], [70.0, 70.1, 69.9])
    assert main(["scorecard", "--reports", str(tmp_path), "--ablations", str(REPO / "ablations"),
                 "--results", str(tmp_path / "no_results")]) == 0
    out = capsys.readouterr().out
    assert "MAE" in out and "scorecard.md" in out and "index.html" in out
    index = (tmp_path / "index.html").read_text()  # the index of every study shows the totals
    assert 'id="scorecard-totals"' in index and TABLE1C in index
    page = (tmp_path / "scorecard.md").read_text()
    assert "| **all** | **1** | **1** | **1** | **0** | **0** | **2 of 2** |" in page
    assert "MAE Table 1c" in page


def test_a_missing_reports_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["scorecard", "--reports", str(tmp_path / "nowhere")]) == 2
    assert "--reports" in capsys.readouterr().err


def test_every_committed_comparison_is_on_the_scorecard():
    papers = spec_papers(REPO / "ablations")
    committed = sorted(p.parent.name for p in (REPO / "reports").glob("*/comparison.csv"))
    assert committed and all(study_paper(s, papers) for s in committed)
    frame = scorecard(REPO / "reports", REPO / "ablations")
    assert sorted(frame["study"].unique()) == committed
    # SparK's and SimMIM's ablations give no numbers: their rows count nothing and say so
    by_paper = totals(frame).set_index("paper")
    for paper in ("SparK", "SimMIM"):
        assert by_paper.loc[paper, "paper_orderings"] == 0
        assert by_paper.loc[paper, "best_matches"] == "– (no paper number)"
