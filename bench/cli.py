"""The `mimbench` command: plan, run and report ablation studies.

    mimbench plan ablations/quickstart.yaml          what would run, what is done; runs nothing
    mimbench run  ablations/quickstart.yaml          run what is not done, then write the report
    mimbench report results/quickstart               tables and plots from finished runs
    mimbench run ablations/mae/fig5_mask_ratio.yaml --profile small    a spec at one of its scales
    mimbench report results/mae_fig5_mask_ratio-small [--paper mae:fig5]   ours beside the paper's
    mimbench run ablations/masking_across_methods.yaml --profile small   a collection: each arm in turn
    mimbench report ablations/masking_across_methods.yaml --profile small   the arms side by side
    mimbench status quickstart                       done / running / pending / failed per run
    mimbench scorecard                               how much of each paper reproduced, every comparison
    mimbench cancel quickstart                       scancel the study's live SLURM jobs
    mimbench masks --strategy block --ratio 0.75 --grid 14 --stats [--png masks.png]
    mimbench bench masks | mimbench bench speed --preset mae_vit_small_patch4

Bad input stops with one line (file, key, allowed values) and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from bench.core.errors import ConfigError
from bench.study.budget import check_rates, plan_budget

LAUNCH_FLAGS = {  # command-line flag -> launch key
    "executor": "executor", "parallel": "parallel", "threads": "threads", "device": "device",
    "timeout_min": "timeout_min", "partition": "partition", "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "constraint": "constraint",
    "account": "account", "qos": "qos", "data_root": "data_root", "tasks_per_node": "tasks_per_node",
    "nodes": "nodes", "checkpoint_every": "checkpoint_every", "compile": "compile",
}


def _add_launch_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launch (override the spec's launch section)")
    g.add_argument("--executor", choices=("debug", "local", "slurm"))
    g.add_argument("--parallel", type=int, help="runs at a time (local) / array parallelism (slurm)")
    g.add_argument("--threads", type=int, help="torch threads per run (default: cores / parallel)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"))
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the pre-training forward (one run of compiling first)")
    g.add_argument("--timeout-min", type=int)
    g.add_argument("--partition")
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--tasks-per-node", type=int, help="slurm: processes per node, one per GPU (DDP)")
    g.add_argument("--nodes", type=int)
    g.add_argument("--checkpoint-every", type=int, help="save a checkpoint every N pre-training epochs")
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--constraint")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--data-root", help="folder with the dataset (else $MIMBENCH_DATA, else Debian's)")


def _launch_overrides(args) -> dict:
    return {key: getattr(args, flag) for flag, key in LAUNCH_FLAGS.items() if getattr(args, flag, None) is not None}


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _studies(args) -> list:
    """The studies a spec names: itself, or a collection's arms (bench.study.arms); data checked."""
    from bench.study.arms import is_collection, load_collection
    from bench.study.spec import check_data, load_study

    if is_collection(args.spec):
        studies = load_collection(args.spec, _launch_overrides(args), args.profile).arms
    else:
        studies = [load_study(args.spec, _launch_overrides(args), args.profile)]
    for study in studies:
        check_data(study)  # the data root and the dataset's files, before anything is listed or runs
    return studies


def cmd_plan(args) -> int:
    out, args.rates = Console(), check_rates(args.compute, args.gpu_tflops, args.images_per_s)  # before any data
    for study in _studies(args):
        _plan_study(study, args, out)
    return 0


def _plan_study(study, args, out: Console) -> None:
    from bench.launch.store import RunFolder

    statuses = {}
    for run in study.runs:
        folder = RunFolder(args.results, study.name, run.run_id)
        statuses[run.run_id] = ("done" if folder.is_done() else "failed" if folder.error_path.exists()
                                else "partial" if folder.metrics_path.exists() else "to do")
    n_done = sum(s == "done" for s in statuses.values())
    out.print(f"study [bold]{study.name}[/] ({study.path}): {study.description}".rstrip(": "))
    out.print(f"{len(study.runs)} runs, {n_done} done, {len(study.runs) - n_done} to run; "
              f"executor {study.launch['executor']}, results in {Path(args.results) / study.name}")
    settings = [r for r in study.runs if not r.config.get("baseline")]
    for axis in study.axes:
        values = list(dict.fromkeys(_format_value(r.varying[axis]) for r in settings))
        out.print(f"varies {axis}: {', '.join(values)}")
    seeds = sorted({r.config["seed"] for r in study.runs})
    out.print(f"seeds: {', '.join(map(str, seeds))}")
    if len(study.runs) > len(settings):
        out.print(f"baselines: {len(study.runs) - len(settings)} runs (random init, raw pixels; shared with other studies)")
    budget = plan_budget(study, statuses, args.rates)  # empty (and no torch) unless the compute is asked for
    table = Table(Column("run id", no_wrap=True), *study.axes, "seed", "status", *budget.headers)
    for run in study.runs:
        cells = [_format_value(run.varying[a]) if a in run.varying else f"baseline: {run.config['baseline']}"
                 if i == 0 else "" for i, a in enumerate(study.axes)]
        table.add_row(run.run_id, *cells, str(run.config["seed"]), statuses[run.run_id], *budget.cells.get(run.run_id, ()))
    out.print(table)
    budget.print_lines(out)


def _print_report(paths: dict, out: Console) -> None:
    out.print(Path(paths["table_md"]).read_text())
    if paths.get("comparison_md"):
        out.print(Path(paths["comparison_md"]).read_text())
    written = [paths[k] for k in ("table_md", "table_csv", "plot", "comparison_md", "comparison_csv", "comparison_png",
                                  "curves", "index_html", "site_index_html") if paths.get(k)]
    out.print("wrote " + ", ".join(map(str, written)))
    if paths.get("index_html"):
        out.print(f"open {Path(paths['index_html']).resolve().as_uri()} in a browser")


def cmd_run(args) -> int:
    studies = _studies(args)  # a collection's arms all checked before the first runs
    failed = sum(_run_study(study, args) for study in studies)
    from bench.study.arms import is_collection
    if is_collection(args.spec) and not args.no_report and not args.no_wait:
        _write_across(args.spec, args.profile, args.reports)
    return 1 if failed else 0


def _run_study(study, args) -> bool:
    """Run one study's unfinished runs and write its report; True when a run failed."""
    from bench.launch.launcher import launch_study
    from bench.analysis.report import write_report

    err = Console(stderr=True)
    total = len(study.runs)
    err.print(f"study [bold]{study.name}[/]: {total} runs, executor {study.launch['executor']}")
    outcome = launch_study(study, args.results, force=args.force, wait=not args.no_wait, console=err,
                           calibrate=not getattr(args, "no_calibrate", False))
    err.print(f"{len(outcome.done)} finished, {len(outcome.skipped)} already done (skipped), "
              f"{len(outcome.failed)} failed" + (f", {len(outcome.submitted)} submitted" if outcome.submitted else "")
              + (f", {len(outcome.already_running)} still queued or running from an earlier launch"
                 if outcome.already_running else "")
              + (f", {len(outcome.running_elsewhere)} running elsewhere (another launch holds their lease)"
                 if outcome.running_elsewhere else ""))
    for rid, line in outcome.failed.items():
        err.print(f"[red]failed[/] {rid}: {line} (traceback in {Path(args.results) / study.name / rid / 'error.txt'})")
    if not args.no_report and not outcome.submitted and (outcome.done or outcome.skipped):
        _print_report(write_report(Path(args.results) / study.name, args.reports, study.description), Console())
    return bool(outcome.failed)


def cmd_report(args) -> int:
    from bench.papers import parse_paper_ref, subtable
    from bench.analysis.report import write_report

    from bench.study.arms import is_collection
    if is_collection(args.study_dir):
        if args.paper:
            raise ConfigError("--paper", "a collection's arms are compared with each other; allowed: no --paper")
        _write_across(args.study_dir, args.profile, args.reports)
        return 0
    if args.profile:
        raise ConfigError("--profile", "only with a collection (a file with `arms`); a study folder is one profile")
    study_dir = Path(args.study_dir)
    if not study_dir.is_dir():
        raise ConfigError("STUDY_DIR", f"{study_dir} is not a folder; allowed: results/<study>")
    if args.paper:
        subtable(*parse_paper_ref(args.paper))  # a bad --paper stops before anything is written
    paths = write_report(study_dir, args.reports, paper=args.paper)
    _print_report(paths, Console())
    return 0


def _write_across(path, profile: str | None, reports: str) -> None:
    from bench.analysis.across import write_across_report
    from bench.study.arms import load_collection

    paths = write_across_report(load_collection(path, profile=profile), profile, reports)
    out = Console()
    out.print(Path(paths["table_md"]).read_text())
    out.print("wrote " + ", ".join(str(paths[k]) for k in ("table_md", "table_csv", "heatmap")))


def _study_dir(args) -> Path:
    """A study given as results/<study>, <study>, or its spec file."""
    target = Path(args.study)
    if target.suffix in (".yaml", ".yml") and target.is_file():
        from bench.study.spec import load_study
        return Path(args.results) / load_study(target, {}, args.profile).name
    return target if target.is_dir() and target.parent != Path(".") else Path(args.results) / args.study


def cmd_status(args) -> int:
    from bench.launch.status import study_status
    from bench.launch.store import read_study_manifest

    studies = [_study_dir(args)] if args.study else sorted(
        p for p in Path(args.results).iterdir() if p.is_dir() and not p.name.startswith((".", "_")))  # _cache
    out = Console()
    for study_dir in studies:
        statuses = study_status(study_dir, read_study_manifest(study_dir).get("runs"))
        counts = {}
        for s in statuses:
            counts[s.state] = counts.get(s.state, 0) + 1
        out.print(f"[bold]{study_dir.name}[/]: " + ", ".join(f"{n} {state}" for state, n in counts.items()))
        table = Table("run id", "state", "job", "resumed", "detail")
        for s in statuses:
            table.add_row(s.run_id, s.state, s.job_id or "", str(s.resumed), s.detail)
        out.print(table)
    return 0


def cmd_cancel(args) -> int:
    from bench.launch.status import cancel_study

    ids = cancel_study(_study_dir(args))
    print(f"cancelled {len(ids)} job(s)" + (": " + " ".join(ids) if ids else ""))
    return 0


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError("--grid", f"{text!r} is not allowed; allowed: H or HxW, e.g. 14 or 14x14")
    return (int(parts[0]), int(parts[-1]))


def _finite(value):
    """Strict JSON: an infinite statistic (a position never masked) prints as null."""
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def cmd_masks(args) -> int:
    import json

    import yaml

    from bench.masking import tools as mask_tools

    from bench import masking

    params = yaml.safe_load(args.params) if args.params else {}
    grid = _grid(args.grid)
    if args.strategy != "all":
        masking.resolve_params(args.strategy, params, args.ratio, grid)  # one-line error on bad input
    if not 0 < args.ratio < 1:
        raise ConfigError("--ratio", f"{args.ratio} is out of range; allowed: 0 < x < 1")
    result = mask_tools.masks_command(args.strategy, args.ratio, grid, args.batch, args.frames, params,
                                      args.seed, args.stats, args.png, args.device)
    print(json.dumps(_finite(result)))
    return 0


def cmd_scorecard(args) -> int:
    from bench.analysis.scorecard import COUNTS, write_scorecard

    for folder, flag in ((args.reports, "--reports"), (args.ablations, "--ablations")):
        if not Path(folder).is_dir():
            raise ConfigError(flag, f"{folder} is not a folder")
    out = write_scorecard(args.reports, args.ablations)
    from bench.analysis.html import write_site_index
    out["site_index_html"] = write_site_index(args.reports, args.results)  # the index shows the scorecard
    console = Console()
    if out["frame"].empty:
        console.print(f"no committed comparison under {args.reports}/ (a report folder with runs.csv whose "
                      f"spec under {args.ablations}/ names a paper)")
    else:
        table = Table(title="reproduction scorecard: the paper's orderings (gap ≥ 1 point) at our scale")
        for name in ("paper", "comparisons", "orderings", "reproduced", "reversed", "not resolved", "best matches"):
            table.add_column(name, justify="left" if name == "paper" else "right")
        for row in out["totals"].to_dict("records"):
            table.add_row(row["paper"], str(row["comparisons"]), str(row["paper_orderings"]),
                          *(str(row[c]) for c in COUNTS), row["best_matches"])
        console.print(table)
    console.print(f"wrote {out['scorecard_md']}, {out['scorecard_csv']} and {out['site_index_html']}")
    return 0


def cmd_bench(args) -> int:
    import json

    if args.what == "masks":
        from bench.benchmarks import masks as mask_bench

        rows = mask_bench.bench_masks(args.batch, _grid(args.grid), args.ratio, args.repeats, args.device)
        for row in rows:
            print(json.dumps(_finite(row)))
        print(mask_bench.format_bench_table(rows))
        return 0
    from bench.benchmarks import speed

    return speed.main_speed(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimbench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="print the runs a spec expands to and which are done")
    p.add_argument("spec")
    p.add_argument("--profile", help="one of the spec's profiles, e.g. small (default: the spec as written)")
    p.add_argument("--results", default="results")
    p.add_argument("--compute", action="store_true", help="each run's pre-training and eval FLOPs (imports torch)")
    p.add_argument("--gpu-tflops", metavar="X", help="the compute, and GPU-hours at X TFLOP/s sustained per GPU")
    p.add_argument("--images-per-s", metavar="N", help="the compute, and GPU-hours at N pre-training images/s")
    _add_launch_flags(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="run what is not done yet, then write the report")
    p.add_argument("spec")
    p.add_argument("--profile", help="one of the spec's profiles, e.g. small (default: the spec as written)")
    p.add_argument("--results", default="results", help="results root (default: results)")
    p.add_argument("--reports", default="reports", help="reports root (default: reports)")
    p.add_argument("--force", action="store_true", help="rerun finished runs too")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-calibrate", action="store_true", help="local: skip the calibration step and time estimate")
    _add_launch_flags(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="write tables and plots for a study's finished runs")
    p.add_argument("study_dir", help="results/<study>, or a collection's file (its `arms` compared)")
    p.add_argument("--profile", help="with a collection: the arms' profile, e.g. small")
    p.add_argument("--reports", default="reports")
    p.add_argument("--paper", help="compare with a paper's subtable, PAPER:SUBTABLE (e.g. mae:table1f); "
                                   "default: the one the study's spec names")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("scorecard", help="how much of each paper reproduced, over every committed comparison")
    p.add_argument("--reports", default="reports", help="the reports folder (each study's runs.csv)")
    p.add_argument("--ablations", default="ablations", help="the specs, to find each study's paper subtable")
    p.add_argument("--results", default="results", help="the runs, for each study's state on reports/index.html")
    p.set_defaults(func=cmd_scorecard)

    p = sub.add_parser("status", help="done / running / pending / failed / interrupted, per run")
    p.add_argument("study", nargs="?", help="study name, results/<study> or its spec (default: all)")
    p.add_argument("--profile", help="with a spec: which of its profiles")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("masks", help="generate masks of a strategy; print their statistics as one JSON line")
    p.add_argument("--strategy", default="random", help="a registered strategy, or 'all'")
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--grid", default="14", help="patch grid, H or HxW (default 14)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--frames", type=int, help="a time axis of T frames (tube masking)")
    p.add_argument("--params", help="the strategy's parameters as YAML, e.g. '{min_patches: 16}'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stats", action="store_true",
                   help="realised ratio, regions (pieces) and single-patch regions per mask, evenness")
    p.add_argument("--png", help="draw a gallery of 8 samples per strategy")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser("bench", help="benchmarks: 'masks' (batched vs per-sample) or 'speed' (training steps)")
    which = p.add_subparsers(dest="what", required=True)
    q = which.add_parser("masks", help="ms per batch: batched strategies vs per-sample Python")
    q.add_argument("--batch", type=int, default=256)
    q.add_argument("--ratio", type=float, default=0.75)
    q.add_argument("--grid", default="14")
    q.add_argument("--repeats", type=int, default=5)
    q.add_argument("--device", default="cpu")
    q.set_defaults(func=cmd_bench)
    from bench.benchmarks.speed import add_speed_arguments
    add_speed_arguments(which.add_parser("speed", help="images/s of pretrain, encoder, probe and fine-tune steps"))
    which.choices["speed"].set_defaults(func=cmd_bench)

    p = sub.add_parser("cancel", help="cancel a study's pending and running SLURM jobs")
    p.add_argument("study", help="study name, results/<study> or its spec")
    p.add_argument("--profile", help="with a spec: which of its profiles")
    p.add_argument("--results", default="results")
    p.set_defaults(func=cmd_cancel)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print("mimbench: error: " + " ".join(str(err).splitlines()), file=sys.stderr)  # one line, always
        return 2


if __name__ == "__main__":
    sys.exit(main())
