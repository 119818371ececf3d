"""kill -9 at every stage of a run, then launch again: the run ends with exactly the numbers of
a run never interrupted (resumed from its checkpoint, or re-run clean) — never done-but-wrong,
never stuck.

Each case starts `mimbench run` (debug executor: the run trains in the launcher's own process)
with MIMBENCH_TEST_DIE_AT=<point>, the test hook of bench.launch.store: the process sends
itself SIGKILL when the run reaches <point> — right after a phase's metrics line for an epoch
is written, or just before / during (temporary file written, not renamed) / just after the
atomic write of result.json. Then it launches again without the hook and compares every
metrics line and the result with an uninterrupted run of the same config. One more case kills
the job process of the local executor, whose launcher survives it: the run is reported failed,
its error.txt names the phase, and the next launch resumes it.

Every launch is a fresh Python that imports torch and timm (most of its time), so the cases
run two at a time, all in one module fixture; the tests then check one case each.
"""
import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from bench.launch.job import run_one
from bench.launch.status import study_status
from bench.launch.store import RunFolder
from bench.study.spec import load_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# (executor, where to die, checkpoint every N pre-training epochs; 0: none, the relaunch re-runs clean)
CASES = [
    ("debug", "pretrain:1", 1),  # before its first checkpoint: a clean re-run
    ("debug", "pretrain:2", 1),  # mid pre-training: resumes from epoch 1's checkpoint
    ("debug", "linear_probe:2", 1),  # resumes the evals from the encoder checkpoint
    ("debug", "finetune:1", 1),
    ("debug", "result:before", 1),
    ("debug", "result:during", 1),  # leaves .result.json.*.tmp behind
    ("debug", "result:after", 1),  # done; its checkpoint not yet removed
    ("debug", "linear_probe:2", 0),  # no checkpoint: a clean re-run (the encoder from the cache)
    ("local", "finetune:1", 1),  # the job's process dies, its launcher lives
]
IDS = [f"{e}-{p}-ckpt{c}" for e, p, c in CASES]


def launch(spec, results, executor="debug", checkpoint_every=1, die_at=None):
    env = {k: v for k, v in os.environ.items() if k != "MIMBENCH_TEST_DIE_AT"}
    env["OMP_NUM_THREADS"] = "1"
    if die_at:
        env["MIMBENCH_TEST_DIE_AT"] = die_at
    return subprocess.run([sys.executable, "-m", "bench", "run", str(spec), "--executor", executor, "--threads", "1",
                           "--checkpoint-every", str(checkpoint_every), "--results", str(results), "--no-report"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def numbers(folder: RunFolder):
    result = json.loads(folder.result_path.read_text())
    return ([(r["phase"], r["epoch"], r["loss"]) for r in folder.read_metrics()],
            {k: result[k] for k in ("finetune_top1", "linear_probe_top1", "pretrain_final_loss", "pretrained_by")})


@pytest.fixture(scope="module")
def kills(tmp_path_factory):
    """Every case killed and relaunched; and the numbers of the run never interrupted."""
    from conftest import TINY_BASE

    base = json.loads(json.dumps(TINY_BASE))
    base["data"] = {"name": "synthetic", "train_limit": 64, "test_limit": 32, "img_size": 16}
    base["pretrain"]["epochs"] = 3
    top = tmp_path_factory.mktemp("kill")
    spec = top / "k.yaml"
    spec.write_text(yaml.safe_dump({"name": "k", "base": base}, sort_keys=False))
    [run] = load_study(spec).runs

    def case(i):
        executor, point, every = CASES[i]
        results = top / f"case{i}"
        killed = launch(spec, results, executor, every, die_at=point)
        folder = RunFolder(results, "k", run.run_id)
        after_kill = {"status": study_status(results / "k")[0],
                      "orphans": [p.name for p in folder.path.glob(".*.tmp")],
                      "error": folder.error_path.read_text() if folder.error_path.exists() else None}
        return killed, after_kill, launch(spec, results, executor, every), folder

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(case, range(len(CASES))))
    run_one(run.config, "k", str(top / "reference"), {"device": "cpu", "threads": 1})
    return outcomes, numbers(RunFolder(top / "reference", "k", run.run_id))


@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_killed_then_relaunched_ends_exactly_as_uninterrupted(kills, i):
    outcomes, expected = kills
    executor, point, every = CASES[i]
    killed, after_kill, again, folder = outcomes[i]
    state = after_kill["status"].state
    if executor == "debug":  # the launcher itself died
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # a dead holder holds nothing: the run reads as interrupted (done, if it died after its result)
        assert state == ("done" if point == "result:after" else "interrupted")
    else:  # the job died; its launcher says so, and error.txt names the phase
        assert killed.returncode == 1 and "0 finished, 0 already done (skipped), 1 failed" in killed.stderr
        assert state == "failed" and after_kill["error"].startswith(f"phase: {point.split(':')[0]}\n")
    assert (point == "result:during") == any(n.startswith(".result.json.") for n in after_kill["orphans"])

    assert again.returncode == 0, again.stderr
    summary = "0 finished, 1 already done" if point == "result:after" else "1 finished, 0 already done"
    assert f"{summary} (skipped), 0 failed" in again.stderr
    assert numbers(folder) == expected  # every metrics line and the result, to the last digit
    [status] = study_status(folder.path.parent)
    assert status.state == "done"
    leftovers = [p.name for p in folder.path.iterdir()
                 if p.name in ("checkpoint.pt", "lease.json", "error.txt") or p.name.endswith(".tmp")]
    assert leftovers == []
    resumed = (folder.path / "resumed.log").exists()
    assert resumed == (every > 0 and point not in ("pretrain:1", "result:after"))
