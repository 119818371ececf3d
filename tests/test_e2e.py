"""A tiny study end to end on generated data: spec → submitit → results → report; relaunch and force."""
import json

import pandas as pd
import yaml

from bench.cli import main
from bench.launch.store import RunFolder


def write_study(tmp_path, tiny_base, name="tiny", strategies=("random", "grid"), seeds=(0,), launch=None):
    spec = {"name": name, "description": "tiny end-to-end study", "base": tiny_base,
            "grid": {"masking.strategy": list(strategies)}, "seeds": list(seeds), "launch": launch or {}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cli(tmp_path, *args):
    return main([*args, "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")])


def snapshot(study_dir):
    """run id -> (result.json mtime, metrics.jsonl content) of every finished run."""
    return {p.parent.name: (p.stat().st_mtime_ns, (p.parent / "metrics.jsonl").read_text())
            for p in study_dir.glob("*/result.json")}


def check_report(tmp_path, study, n_rows):
    table = pd.read_csv(tmp_path / "reports" / study / "table.csv")
    assert len(table) == n_rows
    assert table["finetune_mean"].notna().all() and table["linear_probe_mean"].notna().all()
    assert table["finetune_mean"].between(0, 100).all()
    md = (tmp_path / "reports" / study / "table.md").read_text()
    assert "fine-tune" in md and "linear probe" in md
    assert (tmp_path / "reports" / study / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_debug_study_end_to_end_then_relaunch_runs_nothing(tmp_path, tiny_base, capsys):
    spec = write_study(tmp_path, tiny_base, seeds=(0, 1))
    assert run_cli(tmp_path, "run", str(spec), "--executor", "debug") == 0
    study_dir = tmp_path / "results" / "tiny"
    done = snapshot(study_dir)
    assert len(done) == 4
    for rid in done:
        folder = RunFolder(tmp_path / "results", "tiny", rid)
        result = json.loads(folder.result_path.read_text())
        assert result["run_id"] == rid and result["linear_probe_feature"] == "cls"
        config = folder.read_config()
        assert config["masking"]["strategy"] in ("random", "grid")
        rows = [json.loads(line) for line in folder.metrics_path.read_text().splitlines()]
        pretrain_rows = [r for r in rows if r["phase"] == "pretrain"]
        assert [r["epoch"] for r in pretrain_rows] == [1, 2]
        assert all({"loss", "lr", "images_per_s", "wall_s"} <= set(r) for r in pretrain_rows)
    check_report(tmp_path, "tiny", 2)

    capsys.readouterr()
    assert run_cli(tmp_path, "run", str(spec), "--executor", "debug") == 0
    assert "0 finished, 4 already done" in capsys.readouterr().err
    assert snapshot(study_dir) == done  # nothing rewritten

    assert main(["plan", str(spec), "--results", str(tmp_path / "results")]) == 0
    assert "4 runs, 4 done, 0 to run" in capsys.readouterr().out


def test_half_written_run_is_rerun_and_force_reruns_all(tmp_path, tiny_base, capsys):
    spec = write_study(tmp_path, tiny_base)
    assert run_cli(tmp_path, "run", str(spec), "--executor", "debug", "--no-report") == 0
    study_dir = tmp_path / "results" / "tiny"
    first = snapshot(study_dir)
    victim = sorted(first)[0]
    (study_dir / victim / "result.json").unlink()  # as if killed before the result was written
    capsys.readouterr()
    assert run_cli(tmp_path, "run", str(spec), "--executor", "debug", "--no-report") == 0
    assert "1 finished, 1 already done" in capsys.readouterr().err
    second = snapshot(study_dir)
    assert set(second) == set(first)
    assert [rid for rid in first if first[rid][0] != second[rid][0]] == [victim]
    assert run_cli(tmp_path, "run", str(spec), "--executor", "debug", "--force", "--no-report") == 0
    third = snapshot(study_dir)
    assert all(third[rid][0] != second[rid][0] for rid in first)
    # same config, same machine: a rerun reproduces its losses exactly
    def losses(text):
        return [json.loads(line).get("loss") for line in text.splitlines()]
    assert all(losses(third[rid][1]) == losses(second[rid][1]) for rid in first)


def test_local_executor_runs_in_parallel_processes(tmp_path, tiny_base, capsys):
    spec = write_study(tmp_path, tiny_base, name="tiny_local",
                       launch={"executor": "local", "parallel": 2, "timeout_min": 5})
    assert run_cli(tmp_path, "run", str(spec)) == 0
    study_dir = tmp_path / "results" / "tiny_local"
    assert len(snapshot(study_dir)) == 2
    assert list((study_dir / ".submitit").glob("*_log.out"))  # really ran through submitit's processes
    err = capsys.readouterr().err  # not a terminal: one plain line per run event
    for rid in snapshot(study_dir):
        assert f"tiny_local: {rid} finished: fine-tune" in err
        assert list((study_dir / rid / "tensorboard").glob("events.out.tfevents.*"))  # written by the job's process
    assert err.count("tiny_local: started strategy=") == 2
    check_report(tmp_path, "tiny_local", 2)


def test_failing_run_is_recorded_and_siblings_finish(tmp_path, tiny_base, capsys):
    import pickle
    tiny_base["data"]["name"] = "cifar10"  # pickles whole enough for the check before the launch, not to load
    (tmp_path / "none" / "cifar-10-batches-py").mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (tmp_path / "none" / "cifar-10-batches-py" / name).write_bytes(pickle.dumps({b"pixels": []}, protocol=2))
    spec = {"name": "mixed", "base": tiny_base, "grid": {"data.name": ["cifar10", "synthetic"]}}
    path = tmp_path / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["run", str(path), "--executor", "debug", "--data-root", str(tmp_path / "none"),
                 "--results", str(tmp_path / "results"), "--reports", str(tmp_path / "reports")]) == 1
    err = capsys.readouterr().err
    assert "1 finished" in err and "1 failed" in err and "cifar10: holds" in err
    errors = list((tmp_path / "results" / "mixed").glob("*/error.txt"))
    assert len(errors) == 1 and "Traceback" in errors[0].read_text()


def test_zip_group_reads_as_one_axis_in_the_report(tmp_path, tiny_base):
    tiny_base["pretrain"]["epochs"] = 1
    spec = {"name": "zipped", "base": tiny_base,
            "zip": [{"masking.strategy": ["random", "block"], "masking.ratio": [0.75, 0.5]}]}
    path = tmp_path / "zipped.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert run_cli(tmp_path, "run", str(path), "--executor", "debug") == 0
    table = pd.read_csv(tmp_path / "reports" / "zipped" / "table.csv")
    assert table.iloc[:, 0].tolist() == ["random, 0.75", "block, 0.5"]  # the spec's order
    assert "masking.strategy / masking.ratio" in (tmp_path / "reports" / "zipped" / "table.md").read_text()
