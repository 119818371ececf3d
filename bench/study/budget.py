"""Budget before launch: the compute a study's runs cost, and the GPU-hours at a stated rate.

    mimbench plan SPEC --compute                    pre-training and eval FLOPs, per run and in total
    mimbench plan SPEC --gpu-tflops 100             ... and GPU-hours at 100 TFLOP/s sustained per GPU
    mimbench plan SPEC --images-per-s 2400          ... at a measured pre-training rate (bench speed)

A run's compute is forward FLOPs per image (the method's `flops_per_image`, bench.methods) ×
images × epochs, with a step that trains counted as 3 × its forward (forward + backward):

    pretrain      3 × flops_per_image(masking.ratio)["total"] × train images × pretrain.epochs
    finetune      3 × encoder × train images × epochs + encoder × test images
    linear_probe  encoder × (train + test images) with augmentation none (features computed once),
                  else encoder × train images × epochs + encoder × test images (frozen: no backward)
    knn           encoder × (train + test images); 0 when the probe's cached features are its own
                  (bench.study.config.probe_and_knn_share_features: extracted once)

where `encoder` is flops_per_image(0.0)["encoder"], the encoder with every patch visible (MAE's
encoder at ratio 0 sees all of them; the masked-ViT and Swin encoders always do; SparK's dense
emulation costs the same at any ratio; VideoMAE keeps one cube masked, as `num_masked` does, so
its eval encoder is counted one cube short). Pre-training is counted at the nominal masking.ratio
(tube masking at 90% on a 4×4 grid realises 87.5%), a partial fine-tune (evals.finetune.blocks)
as a full one: an upper bound. Each eval counts only when enabled. A random-init
baseline does not pre-train; a raw-pixels baseline has no encoder (~0). The model is built with
the `pixel` target standing in for the run's (no tokenizer is fitted), so its prediction head is
counted at pixel width; a target's own cost (a tokenizer's forward, HOG) is not counted, nor are
norms, softmax and the optimizer step. Images: data.train_limit / test_limit when set, else the
dataset's `count` (bench.data); a split whose size is not known leaves the run's compute unknown.

Models are built once per distinct (method, model, input) on torch's meta device when the
method's flops_per_image works there (Swin), else on the CPU (MAE, BEiT/SimMIM's ViT, SparK,
VideoMAE: their builders or FLOP counters read tensor values; ViT-L/16 at 224 px takes seconds).
This module imports torch only when a compute is asked for (`plan_budget` with rates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.core.errors import ConfigError
from bench.core.hashing import canonical_json
from bench.study.config import probe_and_knn_share_features

HEADER = "FLOP:\npretrain + evals"  # plan's column (its header two lines); its cells read "1.2E + 300P"
TRAIN_FACTOR = 3  # forward + backward ≈ 3 × forward
PREFIXES = ((1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))

_flops: dict = {}  # (model key, ratio) -> forward FLOPs per image by part
_models: dict = {}  # model key -> the built model


# ----------------------------------------------------------------------------- the rate
def parse_rate(flag: str, text: str | None) -> float | None:
    """The value of --gpu-tflops or --images-per-s: a finite number > 0 (None when not given)."""
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        what = "TFLOP/s sustained per GPU" if flag == "--gpu-tflops" else "pre-training images/s (mimbench bench speed)"
        raise ConfigError(flag, f"{text!r} is not allowed; allowed: a finite number > 0, the {what}")
    return value


def check_rates(compute: bool, gpu_tflops: str | None, images_per_s: str | None) -> tuple | None:
    """plan's --compute, --gpu-tflops and --images-per-s as (TFLOP/s or None, images/s or None), or
    None when no compute is asked for; a one-line ConfigError when a rate is bad or both are given."""
    tflops, images = parse_rate("--gpu-tflops", gpu_tflops), parse_rate("--images-per-s", images_per_s)
    if tflops is not None and images is not None:
        raise ConfigError("--images-per-s", "not allowed with --gpu-tflops; allowed: one of --gpu-tflops "
                                            "(a stated rate) or --images-per-s (a measured one)")
    return (tflops, images) if compute or tflops or images else None


# ----------------------------------------------------------------------------- FLOPs per image
def _model_key(cfg: dict) -> str:
    data = cfg["data"]
    return canonical_json([cfg["method"], cfg["model"], data["name"], data["img_size"], data.get("frames"),
                           cfg["pretrain"].get("loss_on"), cfg["pretrain"].get("drop_path")])


def _build(cfg: dict, device: str):
    import torch

    from bench.data import dataset_entry
    from bench.methods import create_method
    from bench.targets import create_target

    with torch.device(device):
        return create_method(cfg["method"]).build_model(cfg, dataset_entry(cfg["data"]["name"]).channels,
                                                        create_target("pixel"))


def flops_per_image(cfg: dict, ratio: float) -> dict[str, float]:
    """Forward FLOPs of one pre-training image (or clip) at mask ratio `ratio`, by part ("encoder",
    "decoder", "total"), of the run config's model with a pixel-width head; cached per model and ratio.
    The model is built on the meta device, or on the CPU when its builder or FLOP count needs values."""
    from bench.methods import create_method

    key, method = _model_key(cfg), create_method(cfg["method"])
    if (key, ratio) in _flops:
        return _flops[key, ratio]
    if key not in _models:
        try:
            model = _build(cfg, "meta")
            _flops[key, ratio] = method.flops_per_image(model, ratio)
            _models[key] = model
            return _flops[key, ratio]
        except (NotImplementedError, RuntimeError):  # a value read from a meta tensor: build it for real
            _models[key] = _build(cfg, "cpu")
    _flops[key, ratio] = method.flops_per_image(_models[key], ratio)
    return _flops[key, ratio]


# ----------------------------------------------------------------------------- one run
def run_budget(cfg: dict, n_train: int, n_test: int) -> dict:
    """FLOPs of one run, by phase ("pretrain", "finetune", "linear_probe", "knn"; an eval not
    enabled is 0), "evals" (their sum) and "total"; "train_per_image": the pre-training step's
    FLOPs per image (3 × forward), 0 for a baseline."""
    out = {"pretrain": 0.0, "finetune": 0.0, "linear_probe": 0.0, "knn": 0.0, "train_per_image": 0.0}
    baseline = cfg.get("baseline")
    if baseline == "raw_pixels":  # no encoder: the probe and k-NN read the pixels
        out.update(evals=0.0, total=0.0)
        return out
    if not baseline:
        out["train_per_image"] = TRAIN_FACTOR * flops_per_image(cfg, cfg["masking"]["ratio"])["total"]
        out["pretrain"] = out["train_per_image"] * n_train * cfg["pretrain"]["epochs"]
    encoder, evals = flops_per_image(cfg, 0.0)["encoder"], cfg["evals"]
    if evals["finetune"]["enabled"]:
        out["finetune"] = TRAIN_FACTOR * encoder * n_train * evals["finetune"]["epochs"] + encoder * n_test
    probe = evals["linear_probe"]
    if probe["enabled"]:
        epochs = 1 if probe["augmentation"] == "none" else probe["epochs"]
        out["linear_probe"] = encoder * n_train * epochs + encoder * n_test
    if evals["knn"]["enabled"] and not probe_and_knn_share_features(evals):
        out["knn"] = encoder * (n_train + n_test)
    out["evals"] = out["finetune"] + out["linear_probe"] + out["knn"]
    out["total"] = out["pretrain"] + out["evals"]
    return out


def image_counts(data: dict, data_root: str | None, memo: dict | None = None) -> tuple[int | None, int | None]:
    """(train, test) images (or clips) a run reads: its limits, else the dataset's count; None: not known."""
    from bench.core.registry import load
    from bench.data import dataset_entry

    entry, memo = dataset_entry(data["name"]), {} if memo is None else memo
    counts = []
    for split, limit in (("train", data.get("train_limit")), (entry.test_split, data.get("test_limit"))):
        if limit is None and (data["name"], data_root, split) not in memo:
            memo[data["name"], data_root, split] = load(entry.count)(data["name"], data_root, split)[0] \
                if entry.count else None
        counts.append(limit if limit is not None else memo[data["name"], data_root, split])
    return counts[0], counts[1]


# ----------------------------------------------------------------------------- a study, for plan
def flop_text(value: float, unit: str = "FLOP") -> str:
    """FLOPs in a readable SI unit: 1.23 EFLOP, 456 GFLOP, 0 FLOP (unit "": 1.23E, 456G, 0)."""
    for scale, prefix in PREFIXES:
        if value >= scale:
            return f"{value / scale:.3g} {prefix}{unit}" if unit else f"{value / scale:.3g}{prefix}"
    return f"{value:.3g} {unit}".rstrip()


def hours_text(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}" if hours >= 0.01 else "<0.01" if hours else "0"


@dataclass
class PlanBudget:
    """What plan prints: its extra table columns, their cells per run id, and the lines after the table."""

    headers: tuple = ()
    cells: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)

    def print_lines(self, console) -> None:
        for line in self.lines:
            console.print(line)


def plan_budget(study, statuses: dict, rates: tuple | None) -> PlanBudget:
    """The compute of each of the study's runs and in total, and with a rate (`rates`: check_rates's
    (TFLOP/s, images/s)) the GPU-hours; `statuses`: run id -> plan's status. Empty when `rates` is None."""
    if rates is None:
        return PlanBudget()
    gpu_tflops, images_per_s = rates
    data_root, memo = study.launch.get("data_root"), {}
    budgets, counts = {}, {}
    for run in study.runs:
        n_train, n_test = image_counts(run.config["data"], data_root, memo)
        counts[run.run_id] = (n_train, n_test)
        known = n_train is not None and n_test is not None
        budgets[run.run_id] = run_budget(run.config, n_train, n_test) if known else None
    rate, rate_text = None, ""
    if gpu_tflops is not None:
        rate, rate_text = gpu_tflops * 1e12, f"at {gpu_tflops:g} TFLOP/s sustained"
    elif images_per_s is not None:
        first = next((r for r in study.runs if not r.config.get("baseline")), None)
        if first is None:
            raise ConfigError("--images-per-s", "the study has no pre-training run to turn images/s into FLOP/s; "
                                                "allowed: --gpu-tflops")
        per_image = run_budget(first.config, 1, 0)["train_per_image"]
        rate = images_per_s * per_image
        rate_text = (f"at {images_per_s:g} pre-training images/s = {rate / 1e12:.3g} TFLOP/s sustained "
                     f"({flop_text(per_image)} per image, forward + backward, of run {first.run_id}; "
                     f"every phase priced at that rate)")
    from rich.table import Column

    out = PlanBudget(tuple(Column(h, no_wrap=True) for h in ((HEADER, "GPU-h") if rate else (HEADER,))))
    for run in study.runs:
        rid, b = run.run_id, budgets[run.run_id]
        if b is None:
            out.cells[rid] = ("unknown",) * len(out.headers)
        elif run.config.get("baseline") == "raw_pixels":
            out.cells[rid] = ("~0 (no encoder)",) + (("~0",) if rate else ())
        else:
            cell = f"{flop_text(b['pretrain'], '')} + {flop_text(b['evals'], '')}"
            out.cells[rid] = (cell,) + ((hours_text(b["total"] / rate / 3600),) if rate else ())
    out.lines.append(_total_line(budgets, statuses, rate, rate_text))
    pairs = sorted({c for c in counts.values()}, key=str)
    images = "; ".join(f"{_count(a)} train / {_count(b)} test" for a, b in pairs[:3]) + ("; ..." * (len(pairs) > 3))
    from bench.data import dataset_entry
    samples = "clips" if any(dataset_entry(r.config["data"]["name"]).video for r in study.runs) else "images"
    out.lines.append(f"compute counts forward + backward as 3 × forward and the prediction head at pixel width "
                     f"(the pixel target stands in); {samples} per run: {images}")
    return out


def _count(n: int | None) -> str:
    return "unknown" if n is None else f"{n:,}"


def _total_line(budgets: dict, statuses: dict, rate: float | None, rate_text: str) -> str:
    known = {rid: b for rid, b in budgets.items() if b is not None}
    pretrain, evals = sum(b["pretrain"] for b in known.values()), sum(b["evals"] for b in known.values())
    todo = sum(b["total"] for rid, b in known.items() if statuses.get(rid) != "done")
    line = f"compute: pretrain {flop_text(pretrain)}, evals {flop_text(evals)}, total {flop_text(pretrain + evals)}"
    if rate:
        line += f"; {hours_text((pretrain + evals) / rate / 3600)} GPU-hours {rate_text}"
    line += f"; still to run: {flop_text(todo)}" + (f" ({hours_text(todo / rate / 3600)} GPU-hours)" if rate else "")
    if len(known) < len(budgets):
        line += f"; {len(budgets) - len(known)} runs unknown (their image count is not known)"
    return line
