"""The command line starts light: --help, plan and status import no torch; python -m bench works."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _modules_after(argv: list[str], cwd: Path) -> tuple[int, set[str]]:
    """Run the CLI in a fresh interpreter; return its exit code and the heavy modules it imported."""
    code = ("import json, sys\nfrom bench.cli import main\ntry:\n    rc = main(%r)\nexcept SystemExit as e:\n"
            "    rc = e.code\nheavy = [m for m in ('torch', 'timm', 'torchvision', 'submitit', 'matplotlib', 'pandas')"
            " if m in sys.modules]\nprint('MODULES=' + json.dumps(heavy))\nsys.exit(rc or 0)" % (argv,))
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    line = [l for l in out.stdout.splitlines() if l.startswith("MODULES=")][-1]
    return out.returncode, set(json.loads(line[len("MODULES="):]))


@pytest.mark.parametrize("argv", [["--help"], ["plan", "ablations/quickstart.yaml"],
                                  ["plan", "ablations/mae/table1f_mask_sampling.yaml", "--profile", "small"],
                                  ["status", "--results", "RESULTS"], ["run", "--help"], ["bench", "speed", "--help"]])
def test_light_commands_import_no_torch(argv, tmp_path):
    argv = [str(tmp_path) if a == "RESULTS" else a for a in argv]
    rc, heavy = _modules_after(argv, REPO)
    assert rc == 0
    assert "torch" not in heavy and "timm" not in heavy and "submitit" not in heavy, heavy


def test_python_dash_m_bench_is_the_cli():
    out = subprocess.run([sys.executable, "-m", "bench", "plan", "ablations/quickstart.yaml"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for rid in ("e89f2d5c17f1", "67ba5413c5a5", "4471a3975d87"):  # tests/data/run_ids.json
        assert rid in out.stdout
    bad = subprocess.run([sys.executable, "-m", "bench", "plan", "no/such/spec.yaml"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
