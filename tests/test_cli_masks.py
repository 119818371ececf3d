"""`mimbench masks` and `mimbench bench masks` from the command line."""
import json

from bench.cli import main


def test_masks_prints_one_json_line_with_exact_ratio(capsys, tmp_path):
    assert main(["masks", "--strategy", "walker", "--ratio", "0.75", "--grid", "14", "--batch", "32", "--stats",
                 "--png", str(tmp_path / "g.png")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["ratio_min"] == row["ratio_max"] == 147 / 196
    assert row["regions_mean"] >= 1 and row["ms_per_batch"] > 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_tube_over_frames(capsys):
    assert main(["masks", "--strategy", "tube", "--ratio", "0.9", "--grid", "8x8", "--batch", "4", "--frames", "3",
                 "--stats"]) == 0
    assert json.loads(capsys.readouterr().out)["frames_identical"] is True


def test_bad_input_is_one_line(capsys):
    assert main(["masks", "--strategy", "spiral"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "masking.strategy: 'spiral' is not allowed" in err
    assert main(["masks", "--strategy", "block", "--params", "{attempts: 0}"]) == 2
    assert "masking.params.attempts" in capsys.readouterr().err
    assert main(["masks", "--grid", "14y"]) == 2


def test_bench_masks_prints_a_table(capsys):
    assert main(["bench", "masks", "--batch", "16", "--grid", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r["strategy"] for r in rows} >= {"random", "block", "walker"}
    assert "| strategy |" in out
