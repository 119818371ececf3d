"""The harness at scale: seconds to plan a study of n runs and to report n finished runs.

    harness_spec(n)                a spec whose grid expands to exactly n runs
    bench_harness(n_runs, tmpdir)  times bench.study.spec.load_study on it (target < 1 s for 10,000
                                   runs) and bench.analysis.report.write_report on n fabricated
                                   finished runs (target < 5 s), each with its stages timed apart

`mimbench bench speed --harness` prints its two rows after the step kinds'.
"""
from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path

import timm
import torch

from bench.core.files import atomic_write_text
from bench.study.config import resolve


def _factor(n: int) -> tuple[int, int, int]:
    """n = ratios × blrs × seeds, the axes as balanced as the divisors allow."""
    seeds = 10 if n % 10 == 0 and n >= 100 else 1
    m = n // seeds
    ratios = max(d for d in range(1, math.isqrt(m) + 1) if m % d == 0)
    return ratios, m // ratios, seeds


def harness_spec(n_runs: int, name: str = "harness") -> dict:
    """A spec whose grid expands to exactly n_runs runs (masking.ratio × pretrain.blr × seeds)."""
    n_ratio, n_blr, n_seeds = _factor(n_runs)
    ratios = [round(0.05 + 0.9 * i / max(n_ratio - 1, 1), 6) for i in range(n_ratio)]
    blrs = [round(1e-4 * (1 + i), 8) for i in range(n_blr)]
    return {"name": name, "description": f"{n_runs} runs to time the harness",
            "base": {"data": {"name": "synthetic", "img_size": 32},
                     "model": {"preset": "mae_vit_tiny_patch4"},
                     "pretrain": {"epochs": 100, "warmup_epochs": 10, "batch_size": 256}},
            "grid": {"masking.ratio": ratios, "pretrain.blr": blrs},
            "seeds": list(range(n_seeds)), "launch": {"executor": "local"}}


def _load_study_stages(spec: dict) -> dict[str, float]:
    """Seconds of each stage of spec._expand's per-run loop, timed one call at a time."""
    import copy
    import itertools

    from bench.study.config import set_dotted
    from bench.study.run_ids import run_id

    base = spec["base"]
    axes = [[{k: v} for v in values] for k, values in spec["grid"].items()] + [[{"seed": s} for s in spec["seeds"]]]
    stages = {"copy_of_base": 0.0, "resolve": 0.0, "run_id": 0.0}
    clock = time.perf_counter
    for combo in itertools.product(*axes):
        t0 = clock()
        partial_cfg = copy.deepcopy(base)
        t1 = clock()
        for choice in combo:
            for key, value in choice.items():
                set_dotted(partial_cfg, key, value)
        t2 = clock()
        config = resolve(partial_cfg)
        t3 = clock()
        run_id(config)
        t4 = clock()
        stages["copy_of_base"] += t1 - t0
        stages["resolve"] += t3 - t2
        stages["run_id"] += t4 - t3
    return {k: round(v, 3) for k, v in stages.items()}


def _fake_result(config: dict, rid: str, study: str, rng: random.Random) -> dict:
    """A result.json as bench.launch.job.run_one writes it, with plausible numbers."""
    ratio = config["masking"]["ratio"]
    ft = 80 + 10 * math.sin(3 * ratio) + rng.gauss(0, 0.5)
    lp = 55 + 15 * math.sin(3 * ratio) + rng.gauss(0, 1.0)
    wall_pre = rng.uniform(300, 900)
    return {
        "run_id": rid, "study": study, "finetune_top1": ft, "linear_probe_top1": lp,
        "linear_probe_feature": config["evals"]["linear_probe"]["feature"],
        "finetune_feature": config["evals"]["finetune"]["feature"],
        "evals": {"linear_probe": {"top1": lp, "feature": config["evals"]["linear_probe"]["feature"],
                                   "cached_features": False, "wall_s": rng.uniform(50, 100)},
                  "finetune": {"top1": ft, "feature": config["evals"]["finetune"]["feature"],
                               "wall_s": rng.uniform(100, 300)}},
        "pretrain_images_per_s": rng.uniform(800, 1200), "pretrain_wall_s": wall_pre,
        "pretrain_final_loss": rng.uniform(0.3, 0.6), "total_wall_s": wall_pre + rng.uniform(150, 400),
        "n_params": 1_234_567, "n_params_encoder": 812_345, "torch_version": torch.__version__,
        "timm_version": timm.__version__, "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "device": "cpu (x86_64, 2 threads)", "host": "node01", "slurm_job_id": None, "config": config,
    }


def _write_report_stages(study_dir: Path, reports_root: Path) -> dict[str, float]:
    """Seconds of each stage of report.write_report, called one after the other as it does."""
    from bench.analysis.frames import runs_frame, varying_axes
    from bench.analysis.plots import plot_study
    from bench.analysis.report import format_markdown, setup_line, summary_table

    stages, clock = {}, time.perf_counter
    t = clock()
    frame = runs_frame(study_dir)
    stages["runs_frame (read 10k result.json + DataFrame)"], t = clock() - t, clock()
    axes = varying_axes(frame)
    table = summary_table(frame, axes)
    stages["varying_axes + summary_table"], t = clock() - t, clock()
    out = reports_root / (study_dir.name + "_stages")
    atomic_write_text(out / "runs.csv", frame.to_csv(index=False))
    atomic_write_text(out / "table.csv", table.to_csv(index=False))
    atomic_write_text(out / "table.md", format_markdown(table, axes) + setup_line(frame))
    stages["csv + markdown"], t = clock() - t, clock()
    plot_study(frame, axes, out / "plot.png", study_dir.name)
    stages["plot_study (png)"] = clock() - t
    return {k: round(v, 3) for k, v in stages.items()}


def bench_harness(n_runs: int = 10000, tmpdir: str | Path | None = None) -> list[dict]:
    """Time load_study on an n_runs spec (target < 1 s) and write_report on n_runs finished runs (< 5 s).

    Returns two rows, {'kind': 'load_study' | 'write_report', 'seconds', 'target_s', 'stages_s', ...}:
    the stages are timed separately (unprofiled) to show where the time goes.
    """
    import yaml

    from bench.analysis import report as report_mod
    from bench.study import spec as spec_mod
    from bench.launch import store

    tmp_ctx = tempfile.TemporaryDirectory() if tmpdir is None else None
    root = Path(tmp_ctx.name if tmp_ctx else tmpdir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        spec = harness_spec(n_runs)
        spec_path = root / "harness.yaml"
        atomic_write_text(spec_path, yaml.safe_dump(spec, sort_keys=False))

        start = time.perf_counter()
        study = spec_mod.load_study(spec_path)
        load_s = time.perf_counter() - start
        stages = _load_study_stages(spec)
        load_row = {
            "kind": "load_study", "n_runs": len(study.runs), "seconds": round(load_s, 3), "target_s": 1.0,
            "stages_s": stages}

        # n finished result folders, written directly: plain writes (no fsync per file) keep fabricating
        # 10,000 of them short; what is timed is reading them
        study_dir = root / "results" / study.name
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
        rng = random.Random(0)
        start = time.perf_counter()
        for run in study.runs:
            folder = study_dir / run.run_id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(yaml.dump(run.config, Dumper=dumper, sort_keys=True))
            (folder / "result.json").write_text(json.dumps(_fake_result(run.config, run.run_id, study.name, rng),
                                                           indent=2, sort_keys=True) + "\n")
            (folder / "metrics.jsonl").write_text("")
        store.write_study_manifest(study_dir, study.name, study.description, str(spec_path), study.axes, [r.run_id for r in study.runs])
        write_s = time.perf_counter() - start

        start = time.perf_counter()
        out = report_mod.write_report(study_dir, root / "reports")
        report_s = time.perf_counter() - start
        report_row = {"kind": "write_report", "n_runs": out["n_runs"], "seconds": round(report_s, 3),
                      "target_s": 5.0, "stages_s": _write_report_stages(study_dir, root / "reports"),
                      "fabricate_folders_s": round(write_s, 2)}
        return [load_row, report_row]
    finally:
        if tmp_ctx:
            tmp_ctx.cleanup()
