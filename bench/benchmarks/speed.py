"""`mimbench bench speed`: its flags (add_speed_arguments) and its entry (main_speed), which prints
one JSON line per measured step kind (bench.benchmarks.steps.speed_report) and, with --harness,
per timing of the harness at scale (bench.benchmarks.harness.bench_harness).

This module imports no torch: the command line builds its parser from it on every call
(`mimbench --help` stays light); the benchmarks are imported when they run.
"""
from __future__ import annotations

import argparse
import json

from bench.methods import list_presets


def add_speed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `mimbench bench speed`."""
    parser.add_argument("--preset", default="mae_vit_small_patch4", choices=list_presets("mae"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.75)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per kind (split over 5 windows)")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile of the fast path")
    parser.add_argument("--ablations", action="store_true", help="also measure each path less one difference")
    parser.add_argument("--threads", type=int, help="torch threads for both paths (default: torch's)")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="our path's precision (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--harness", action="store_true", help="also time load_study and write_report at scale")
    parser.add_argument("--harness-runs", type=int, default=10000)
    return parser


def main_speed(args) -> int:
    """`mimbench bench speed`: one JSON line per measured kind (and per harness timing with --harness)."""
    from bench.benchmarks.harness import bench_harness
    from bench.benchmarks.steps import speed_report

    rows = speed_report(args.preset, batch=args.batch, ratio=args.ratio, device=args.device, steps=args.steps,
                        img_size=getattr(args, "img_size", 32), channels=getattr(args, "channels", 3),
                        compile=getattr(args, "compile", False), ablations=getattr(args, "ablations", False),
                        threads=getattr(args, "threads", None), precision=getattr(args, "precision", None))
    for row in rows:
        print(json.dumps(row), flush=True)
    if getattr(args, "harness", False):
        for row in bench_harness(getattr(args, "harness_runs", 10000)):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main_speed(add_speed_arguments(argparse.ArgumentParser("bench speed")).parse_args()))
