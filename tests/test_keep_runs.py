"""scripts/keep_runs.sh stages a study's finished runs, and only those, for a commit: a clone
with them resumes the study (its plan counts them done)."""
import json
import subprocess
import sys
from pathlib import Path

from bench.launch.store import RunFolder, write_study_manifest
from test_store import full_result

REPO = Path(__file__).resolve().parents[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_keep_runs_stages_the_finished_runs_records_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text("/results/*\n*.pt\n")  # as the project's: results are ignored
    study = repo / "results" / "s"
    write_study_manifest(study, "s", "a study", "spec.yaml", [], ["done1", "half", "running"])
    finished = RunFolder(repo / "results", "s", "done1")
    finished.start({"seed": 0})
    finished.log_metrics({"phase": "pretrain", "epoch": 1, "loss": 0.5})
    finished.write_result(full_result("done1"))
    assert any((finished.path / "tensorboard").iterdir())  # the store's TensorBoard mirror: not staged
    half = RunFolder(repo / "results", "s", "half")
    half.start({"seed": 1})
    half.result_path.write_text('{"run_id": "half", "fine')  # not a complete result: not done
    running = RunFolder(repo / "results", "s", "running")
    running.start({"seed": 2})
    running.checkpoint_path.write_bytes(b"ckpt")
    env = {"PYTHONPATH": str(REPO), "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}  # its python3
    proc = subprocess.run(["bash", str(REPO / "scripts" / "keep_runs.sh"), "results/s"], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "results/s: 1 finished runs staged"
    staged = sorted(git(repo, "diff", "--cached", "--name-only").split())
    assert staged == ["results/s/done1/config.yaml", "results/s/done1/metrics.jsonl", "results/s/done1/result.json",
                      "results/s/study.json"]
    assert json.loads((study / "done1" / "result.json").read_text())["run_id"] == "done1"


def test_keep_runs_refuses_a_folder_that_is_not_a_study(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "keep_runs.sh"), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "study.json not found" in proc.stderr
