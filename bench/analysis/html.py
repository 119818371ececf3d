"""Static HTML pages of the reports, for a browser or a printer (no server, no JavaScript, nothing fetched).

    reports/<study>/index.html   the study's summary table, plot.png, the comparison with the paper
                                 (comparison.png and comparison.md) and the baselines, then one row per
                                 run folder: its state, varying keys, top-1, wall time, links to the
                                 folder and its config.yaml, a failed run's last error line
    reports/<study>/curves.png   loss and learning rate per epoch, one row of panels per phase, a
                                 colour per setting (from the runs' metrics.jsonl, when there are any)
    reports/index.html           every study folder with a table.csv or runs.csv: its runs done / total
                                 (or "report only"), its best setting and the tau against the paper;
                                 then the scorecard (reports/scorecard.csv) when there is one

bench.analysis.report.write_report calls write_html at its end; the pages come from the Jinja2
templates in bench/analysis/templates/, the Markdown the reports already write rendered as HTML.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path

import markdown
import matplotlib.pyplot as plt
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from bench.analysis.baselines import format_baselines
from bench.analysis.frames import METRICS, flatten_config
from bench.analysis.matching import METRICS as PAPER_METRICS
from bench.analysis.plots import axis_label, save_png
from bench.analysis.report import format_markdown, setup_line
from bench.analysis.scorecard import totals
from bench.analysis.stats import kendall
from bench.analysis.tables import MISSING, fmt_value
from bench.core.files import atomic_write_text
from bench.launch.status import study_status
from bench.launch.store import RunFolder, read_result, read_study_manifest

TEMPLATES = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                        autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
PHASES = {"pretrain": "pre-training", "linear_probe": "linear probe", "finetune": "fine-tune"}  # in order
STATE_ORDER = ["done", "running", "pending", "interrupted", "failed", "to do"]  # bench.launch.status
SCORECARD_COLUMNS = ["paper", "subtable", "study", "metric", "settings_in_common", "paper_orderings", "reproduced", "reversed",
                     "not_resolved", "best_matches", "tau", "over_random_init"]  # what the index shows of it
TOP1_COLUMNS = [(col, label) for col, label in METRICS.values() if col != "knn_top1"]


def render_markdown(text: str, heading_shift: int = 0) -> Markup:
    """Markdown (tables included) as HTML; headings moved `heading_shift` levels down."""
    if heading_shift:
        text = "\n".join("#" * heading_shift + line if line.startswith("#") else line for line in text.splitlines())
    return Markup(markdown.markdown(text, extensions=["tables"]))


def link(target: Path, page_dir: Path) -> str:
    """A relative href from the page's folder to `target` (a folder's ends with /)."""
    href = os.path.relpath(os.path.abspath(target), os.path.abspath(page_dir)).replace(os.sep, "/")
    return href + "/" if Path(target).is_dir() else href


def fmt_top1(value) -> str:
    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}"


def fmt_duration(seconds: float | None) -> str:
    """'12 min 5 s', '40 s'; a dash when unknown."""
    if seconds is None or math.isnan(seconds):
        return MISSING
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


# ----------------------------------------------------------------------------- a study's runs
def count_states(states) -> dict[str, int]:
    """{'done': 4, 'failed': 1}, in STATE_ORDER (any other state after those)."""
    counts = Counter(states)
    return {s: counts[s] for s in sorted(counts, key=lambda s: STATE_ORDER.index(s) if s in STATE_ORDER else 99)}


def run_keys(axes: list[str], spec_axes: list[str]) -> list[str]:
    """The config keys a run's row shows: the report's axes (a zip group's keys one by one), the
    spec's (study.json: they may not vary yet among the finished runs), then the seed."""
    keys = [key for axis in axes for key in axis.split(" / ")]
    return list(dict.fromkeys(keys + list(spec_axes) + ["seed"]))


def wall_seconds(result: dict | None, metrics: list[dict]) -> tuple[float | None, bool]:
    """(wall-clock seconds, whether the run is finished): a done run's total, else the time its
    metrics.jsonl shows so far (the last wall_s of each phase, summed)."""
    if result is not None:
        total = result.get("total_wall_s")
        if total is None:
            evals = result.get("evals") or {}
            total = (result.get("pretrain_wall_s") or 0.0) + sum((e or {}).get("wall_s") or 0.0 for e in evals.values())
        return float(total), True
    last = {}
    for row in metrics:
        if isinstance(row.get("wall_s"), (int, float)):
            last[row.get("phase")] = row["wall_s"]
    return (float(sum(last.values())) if last else None), False


def setting_label(config: dict, keys: list[str], baseline: str | None) -> str:
    """'random, 0.75' — the run's values of the axes (the seed aside), or its baseline's kind."""
    if baseline:
        return f"baseline: {baseline}"
    values = [fmt_value(config.get(key)) for key in keys if key != "seed"]
    return ", ".join(values) or "runs"


def study_runs(study_dir: Path, keys: list[str], page_dir: Path) -> list[dict]:
    """One record per run folder of the study (and per run of its spec not started): state, detail,
    values of `keys`, top-1, wall time, links, its setting's label and its metrics lines."""
    runs = []
    for status in study_status(study_dir, read_study_manifest(study_dir).get("runs")):
        folder = RunFolder(study_dir.parent, study_dir.name, status.run_id)
        result = read_result(folder.result_path)
        config = flatten_config(folder.read_config() or {})
        metrics = folder.read_metrics()
        seconds, finished = wall_seconds(result, metrics)
        baseline = (result or {}).get("baseline") or config.get("baseline")
        runs.append({
            "run_id": status.run_id, "state": status.state, "detail": status.detail,
            "values": [fmt_value(config.get(key)) for key in keys], "baseline": baseline,
            "top1": [fmt_top1((result or {}).get(col)) for col, _ in TOP1_COLUMNS],
            "wall": fmt_duration(seconds) + ("" if finished or seconds is None else " so far"),
            "folder_href": link(folder.path, page_dir) if folder.path.is_dir() else None,
            "config_href": link(folder.config_path, page_dir) if folder.config_path.exists() else None,
            "error_href": link(folder.error_path, page_dir) if folder.error_path.exists() else None,
            "setting": setting_label(config, keys, baseline), "metrics": metrics})
    return runs


def plot_curves(runs: list[dict], path: Path, title: str) -> bool:
    """curves.png: per phase, loss and lr against the epoch, a line per run, a colour per setting.
    False (nothing drawn) when no run has metrics."""
    phases = sorted({row.get("phase") for run in runs for row in run["metrics"] if row.get("phase")},
                    key=lambda p: (list(PHASES).index(p) if p in PHASES else len(PHASES), p))
    if not phases:
        return False
    settings = list(dict.fromkeys(run["setting"] for run in runs if run["metrics"]))
    palette = plt.get_cmap("tab10" if len(settings) <= 10 else "tab20")
    colours = {s: palette(i % palette.N) for i, s in enumerate(settings)}
    fig, axes = plt.subplots(len(phases), 2, figsize=(11, 2.6 * len(phases) + 0.8), squeeze=False)
    for row, phase in enumerate(phases):
        for col, key in enumerate(("loss", "lr")):
            ax, epochs_seen = axes[row][col], set()
            for run in runs:
                points = [(m["epoch"], m[key]) for m in run["metrics"]
                          if m.get("phase") == phase and isinstance(m.get(key), (int, float)) and "epoch" in m]
                if points:
                    epochs, values = zip(*sorted(points))
                    epochs_seen.update(epochs)
                    ax.plot(epochs, values, marker="o", markersize=3, linewidth=1.2, alpha=0.85,
                            color=colours[run["setting"]], label=run["setting"])
            ax.set_title(f"{PHASES.get(phase, phase)}: {'loss' if key == 'loss' else 'learning rate'}", fontsize=10)
            ax.set_xlabel("epoch", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            if len(epochs_seen) == 1:  # one epoch: one tick, not a zoom around it
                epoch = epochs_seen.pop()
                ax.set_xticks([epoch])
                ax.set_xlim(epoch - 1, epoch + 1)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(title, fontsize=11)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(len(handles), 5), fontsize=8,
               frameon=False)
    legend_rows = math.ceil(len(handles) / 5)
    fig.tight_layout(rect=(0, min(0.35, 0.3 * legend_rows / (2.6 * len(phases) + 0.8)), 1, 1))
    save_png(fig, path)
    return True


# ----------------------------------------------------------------------------- a study's page
def write_study_html(study_dir: Path, reports_root: Path, frame: pd.DataFrame, axes: list[str],
                     table: pd.DataFrame, baselines: pd.DataFrame, description: str | None,
                     paths: dict) -> dict:
    """reports/<study>/index.html (and curves.png); `paths`: the files write_report wrote."""
    study_dir, out = Path(study_dir), Path(reports_root) / Path(study_dir).name
    keys = run_keys(axes, read_study_manifest(study_dir).get("axes") or [])
    runs = study_runs(study_dir, keys, out)
    written = {"index_html": out / "index.html"}
    curves = out / "curves.png"
    if plot_curves(runs, curves, f"{study_dir.name}: training curves per run"):
        written["curves"] = curves
    comparison = None
    if paths.get("comparison_md") and Path(paths["comparison_md"]).exists():
        text = Path(paths["comparison_md"]).read_text().split("\n## Baselines\n")[0]  # shown in its own section
        text = text.partition("\n\n")[2] if text.startswith("# ") else text  # the page has its own title
        if description and text.startswith(description + "\n\n"):  # the page says it on top
            text = text[len(description) + 2:]
        comparison = render_markdown(text, heading_shift=1)
    page = TEMPLATES.get_template("study.html.j2").render(
        study=study_dir.name, description=description, setup=setup_line(frame),
        states=count_states(run["state"] for run in runs), n_runs=len(runs),
        summary=render_markdown(format_markdown(table, axes)),
        baselines=render_markdown(format_baselines(baselines, frame, axes)) if not baselines.empty else None,
        comparison=comparison, key_labels=[axis_label(k) for k in keys],
        top1_labels=[label for _, label in TOP1_COLUMNS], runs=runs, show_baseline=any(r["baseline"] for r in runs),
        plot="plot.png" if (out / "plot.png").exists() else None,
        comparison_png="comparison.png" if comparison is not None and (out / "comparison.png").exists() else None,
        curves="curves.png" if "curves" in written else None,
        files=[name for name in ("table.md", "table.csv", "runs.csv", "comparison.md", "comparison.csv")
               if (out / name).exists() and (comparison is not None or not name.startswith("comparison"))],
        site_index="../index.html")
    atomic_write_text(written["index_html"], page)
    written["site_index_html"] = write_site_index(reports_root, study_dir.parent)
    return written


# ----------------------------------------------------------------------------- the index of studies
def headline(folder: Path) -> list[str]:
    """The study's best settings and the comparison's tau, or why they cannot be read (another
    study's broken file must not stop this report)."""
    try:
        return best_and_tau(folder)
    except (OSError, ValueError, KeyError, pd.errors.ParserError) as err:
        return [f"cannot read its table: {type(err).__name__}: {err}"]


def best_and_tau(folder: Path) -> list[str]:
    """'best fine-tune top-1: 76.2, mask sampling = random', and the comparison's tau per metric, from the CSVs."""
    lines = []
    if (folder / "table.csv").exists():
        table = pd.read_csv(folder / "table.csv")
        first_metric = next((i for i, c in enumerate(table.columns) if c.endswith("_mean")), 0)
        keys = list(table.columns[:first_metric])
        for name, (_, label) in METRICS.items():
            if f"{name}_mean" not in table or table[f"{name}_mean"].isna().all():
                continue
            best = table.loc[table[f"{name}_mean"].idxmax()]
            setting = "; ".join(f"{' / '.join(map(axis_label, k.split(' / ')))} = {fmt_value(best[k])}"
                                for k in keys if k != "study")  # `study`: no axis, one row
            lines.append(f"best {label}: {best[f'{name}_mean']:.1f}" + (f", {setting}" if setting else ""))
    if (folder / "comparison.csv").exists():
        comparison = pd.read_csv(folder / "comparison.csv")
        taus = []
        for metric in PAPER_METRICS:
            if f"{metric}_ours_mean" in comparison and f"{metric}_paper" in comparison:
                tau, _ = kendall(comparison[f"{metric}_ours_mean"], comparison[f"{metric}_paper"])
                if not math.isnan(tau):
                    taus.append(f"{metric} {tau:.2f}")
        lines.append("Kendall's tau vs the paper: " + (", ".join(taus) if taus else "fewer than 2 settings in common"))
    return lines


def study_state(results_dir: Path) -> str:
    """'4 of 6 runs done, 1 failed' from results/<study>; 'report only' without it."""
    if not results_dir.is_dir():
        return "report only"
    statuses = study_status(results_dir, read_study_manifest(results_dir).get("runs"))
    counts = count_states(s.state for s in statuses)
    others = ", ".join(f"{n} {state}" for state, n in counts.items() if state != "done")
    return f"{counts.get('done', 0)} of {len(statuses)} runs done" + (f", {others}" if others else "")


def read_scorecard(path: Path) -> pd.DataFrame | None:
    """reports/scorecard.csv, or None when it is missing, empty, unreadable or not a scorecard."""
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
        return None
    return frame if not frame.empty and set(SCORECARD_COLUMNS) <= set(frame.columns) else None


def scorecard_rows(frame: pd.DataFrame) -> list[list[str]]:
    """The scorecard's rows as the cells of the index's table (the study's second)."""
    def num(value, fmt):
        return MISSING if pd.isna(value) else format(value, fmt)
    return [[row["subtable"], row["study"], row["metric"], str(row["settings_in_common"]), str(row["paper_orderings"]),
             str(row["reproduced"]), str(row["reversed"]), str(row["not_resolved"]),
             MISSING if pd.isna(row["best_matches"]) else ("same" if str(row["best_matches"]) == "True" else "differs"),
             num(row["tau"], ".2f"), num(row["over_random_init"], "+.1f")] for row in frame.to_dict("records")]


def write_site_index(reports_root: Path | str, results_root: Path | str) -> Path:
    """reports/index.html: every study folder with a table.csv or runs.csv, and the scorecard."""
    root = Path(reports_root)
    studies = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not ((folder / "table.csv").exists() or (folder / "runs.csv").exists()):
            continue
        page = folder / ("index.html" if (folder / "index.html").exists() else "table.md")
        studies.append({"name": folder.name, "href": link(page, root) if page.exists() else None,
                        "state": study_state(Path(results_root) / folder.name), "headline": headline(folder)})
    scorecard = read_scorecard(root / "scorecard.csv")
    html = TEMPLATES.get_template("site_index.html.j2").render(
        studies=studies, study_hrefs={study["name"]: study["href"] for study in studies},
        scorecard=scorecard_rows(scorecard) if scorecard is not None else None,
        scorecard_totals=totals(scorecard).to_dict("records") if scorecard is not None else None,
        scorecard_md="scorecard.md" if (root / "scorecard.md").exists() else None)
    atomic_write_text(root / "index.html", html)
    return root / "index.html"
