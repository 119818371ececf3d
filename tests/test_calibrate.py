"""The calibration step a local launch measures and the time it expects (bench.launch.calibrate)."""
import copy

import pytest
import yaml

from bench.cli import main
from bench.launch.calibrate import Calibration, calibrate, expected_seconds, expected_steps
from bench.study.budget import flops_per_image, run_budget
from bench.study.config import resolve


def test_calibration_times_one_step_of_the_runs_model_and_counts_its_flops(tiny_base):
    cfg = resolve(tiny_base)
    cal = calibrate(cfg, threads=1, steps=1)
    assert 0 < cal.seconds < 60 and cal.threads == 1 and cal.batch == 128
    assert cal.flop == pytest.approx(3 * flops_per_image(cfg, 0.75)["total"] * 128)
    assert cal.flop_per_s == pytest.approx(cal.flop / cal.seconds)


def test_calibration_fits_no_tokenizer(tiny_base):
    tiny_base["pretrain"]["target"] = "dvae_token"  # would train a tokenizer; the calibration uses pixels
    cal = calibrate(resolve(tiny_base), threads=1, steps=1)
    assert cal.seconds > 0


def test_expected_time_is_the_runs_compute_in_calibration_steps(tiny_base):
    configs = [resolve(tiny_base), resolve({**copy.deepcopy(tiny_base), "baseline": "random_init"})]
    cal = Calibration(seconds=0.5, flop=1e9, threads=1, batch=128)
    steps = expected_steps(configs, None, cal)
    budget = sum(run_budget(c, 512, 256)["total"] for c in configs)  # train_limit 512, test_limit 256
    assert steps == pytest.approx(budget / 1e9)
    assert expected_seconds(steps, cal, runs=2, at_once=2, cores=2) == pytest.approx(steps * 0.5 / 2)
    assert expected_seconds(steps, cal, runs=1, at_once=4, cores=2) == pytest.approx(steps * 0.5)  # one run: one at a time
    # five at once on two cores share them: as fast as two at a time, not five
    assert expected_seconds(steps, cal, runs=5, at_once=5, cores=2) == pytest.approx(steps * 0.5 / 2)
    two_threads = Calibration(seconds=0.5, flop=1e9, threads=2, batch=128)
    assert expected_seconds(steps, two_threads, runs=4, at_once=4, cores=4) == pytest.approx(steps * 0.5 / 2)


def test_a_local_launch_prints_the_calibration_and_the_expected_time(tmp_path, tiny_base, capsys):
    spec = {"name": "cal", "base": tiny_base, "grid": {"masking.strategy": ["random"]}, "seeds": [0],
            "launch": {"executor": "local", "parallel": 1, "threads": 1}}
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--results", str(tmp_path / "r"), "--reports", str(tmp_path / "rep"),
                 "--no-report"]) == 0
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if line.startswith("calibration:"))
    assert "batch 128, 1 thread)" in line and "the 1 run to do is about" in line and "min of compute" in line
    assert main(["run", str(path), "--results", str(tmp_path / "r2"), "--reports", str(tmp_path / "rep"),
                 "--no-report", "--no-calibrate"]) == 0
    assert "calibration:" not in capsys.readouterr().err
