"""The result store: atomic writes, a half-written run never reads as done."""
import json

import pytest

from bench.core.files import atomic_write_text
from bench.launch.store import RESULT_KEYS, RunFolder, load_done_runs, read_result


def full_result(run_id="abc"):
    return {k: None for k in RESULT_KEYS} | {"run_id": run_id, "study": "s", "finetune_top1": 80.0}


def test_a_run_is_done_only_with_a_complete_result(tmp_path):
    run = RunFolder(tmp_path, "s", "abc")
    run.start({"seed": 0})
    assert not run.is_done()
    run.log_metrics({"epoch": 1, "loss": 0.5})
    run.result_path.write_text('{"run_id": "abc", "finetune_')  # cut short by a crash
    assert not run.is_done() and load_done_runs(tmp_path / "s") == []
    run.result_path.write_text(json.dumps({"run_id": "abc"}))  # parses but lacks keys
    assert not run.is_done()
    run.write_result(full_result())
    assert run.is_done()
    [loaded] = load_done_runs(tmp_path / "s")
    # a stored config reads with the keys added since at their old values (here: method mae)
    assert loaded["config"] == {"seed": 0, "method": "mae", "baseline": None} \
        and loaded["result"]["finetune_top1"] == 80.0


def test_write_result_refuses_an_incomplete_result(tmp_path):
    run = RunFolder(tmp_path, "s", "abc")
    run.start({})
    with pytest.raises(ValueError, match="lacks"):
        run.write_result({"run_id": "abc"})
    assert not run.result_path.exists()


def test_restarting_a_run_clears_its_old_result_metrics_and_error(tmp_path):
    run = RunFolder(tmp_path, "s", "abc")
    run.start({})
    run.log_metrics({"epoch": 1})
    run.write_error("Traceback ...")
    run.write_result(full_result())
    assert not run.error_path.exists()  # a success removes the earlier error
    run.write_error("boom")
    # a finished result is never deleted by a (re)start or a resume, only by a forced rerun
    with pytest.raises(RuntimeError, match="is done"):
        run.start({})
    with pytest.raises(RuntimeError, match="is done"):
        run.resume({}, pretrain_epochs_done=1)
    assert run.is_done() and run.metrics_path.exists()
    run.start({}, force=True)
    assert not run.result_path.exists() and not run.metrics_path.exists() and not run.error_path.exists()
    run.write_error("Traceback (most recent call last):\nValueError: x\n", phase="finetune")
    assert run.error_path.read_text().startswith("phase: finetune\n")


def test_metrics_and_results_are_strict_json(tmp_path):
    run = RunFolder(tmp_path, "s", "abc")
    run.start({})
    run.log_metrics({"phase": "pretrain", "epoch": 1, "loss": 0.5})
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match=r"metrics of pretrain epoch 2: loss is .*not a finite number"):
            run.log_metrics({"phase": "pretrain", "epoch": 2, "loss": bad, "lr": 0.1})
    with pytest.raises(ValueError, match=r"evals\.knn\.top1 is nan"):
        run.write_result(full_result() | {"evals": {"knn": {"top1": float("nan")}}})
    assert run.read_metrics() == [{"phase": "pretrain", "epoch": 1, "loss": 0.5}]
    assert not run.result_path.exists()
    for line in run.metrics_path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_orphaned_temporary_files_of_the_run_are_removed(tmp_path):
    run = RunFolder(tmp_path, "s", "abc")
    run.start({})
    orphans = [".checkpoint.pt.x1y2z3.tmp", ".result.json.abc123.tmp", ".metrics.jsonl.q.tmp"]
    for name in orphans:
        (run.path / name).write_text("half")
    (run.path / ".job.json.k.tmp").write_text("a launcher's, not the run's")
    assert sorted(run.clean_temp_files()) == sorted(orphans)
    assert sorted(p.name for p in run.path.glob(".*.tmp")) == [".job.json.k.tmp"]


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_text(path, "old")


    with pytest.raises(TypeError):
        atomic_write_text(path, 123)  # not text: fails mid-write
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left behind


def test_metrics_lines_cut_short_are_ignored(tmp_path):
    run = RunFolder(tmp_path, "s", "abc")
    run.start({})
    run.log_metrics({"epoch": 1})
    with open(run.metrics_path, "a") as f:
        f.write('{"epoch": 2, "lo')
    assert run.read_metrics() == [{"epoch": 1}]
    assert read_result(tmp_path / "missing.json") is None


def test_a_run_stored_before_a_key_was_added_resumes_under_the_new_schema(tmp_path):
    """config.yaml written before pretrain.precision existed still matches the run's config."""
    from bench.study.config import resolve
    config = resolve({})
    old = {**config, "pretrain": {k: v for k, v in config["pretrain"].items() if k != "precision"}}
    folder = RunFolder(tmp_path, "study", "abc")
    folder.start(old)
    folder.resume(config, pretrain_epochs_done=1)  # no "does not match" error
    with pytest.raises(ValueError, match="does not match"):
        folder.resume({**config, "seed": 1}, pretrain_epochs_done=1)
