"""The step benchmark of `mimbench bench speed` (bench.benchmarks.speed: its flags): images/s of every
training step kind, against an official-style MAE path.

    speed_report(preset, ...)   one dict per measured step kind (images/s, ratio, exact config)

Step kinds:

    pretrain_official  the official facebookresearch/mae recipe, ported (bench.benchmarks.official_mae)
                       and run on today's timm, as a user running the official repo today gets it
                       (fused attention): a DataLoader with per-sample transforms, masking inside the
                       model, a decoder predicting all L patches, the default AdamW; fp16 AMP on a
                       GPU. The baseline: `ratio_to_official`.
    pretrain_plain     the same on the timm 0.3.2 the official repo pins (explicit attention):
                       `ratio_to_plain`, a second reference.
    pretrain_fast      our pre-training step itself: bench.train.pretrain.build_pretraining builds it
                       from the resolved run config (speed_config) as the pre-training loop does, and
                       the kind times `step(images, lr, generator)` — lr set, batched augmentation
                       on the device, masks from bench.masking, forward and backward through SplitStep
                       (one sub-batch per CPU thread, its linear layers' products on numpy's OpenBLAS:
                       bench.train.openblas), masked-only prediction, fused AdamW; fp32 on the CPU, bf16
                       autocast on a GPU (--precision, i.e. pretrain.precision).
    pretrain_fast_compiled   the same built with compile=True (one part, as pre-training runs it).
    ablation:*         (--ablations) each path less one of its differences; see fast_pretrain_kind
                       for how each goes through the real step.
    encoder_forward, linear_probe_step_cached / _recomputed, finetune_step
                       the evals' steps (bench.benchmarks.eval_kinds).

What the pre-training loop does around the step is not timed: the lr schedule's arithmetic (the
kinds use the base lr throughout), the loss's mean across processes and the checkpoint checks.

Both pre-training paths build the same model sizes and see the same number of tokens; on the
CPU both compute in fp32; they start from the same weights (the method's model as
build_pretraining makes it). The kinds are timed in alternating rounds (bench.benchmarks.timing):
a kind's images/s is the median over its windows, `ratio_to_official` / `ratio_to_plain` the median of
the per-round ratios. Each kind's `gflop_per_s` is its images/s × its FLOPs per image (3 × forward
for a train step); an eval kind's `gflop_per_s_to_pretrain` compares it with the pre-training step's.
"""
from __future__ import annotations

import copy
import os
import platform
import statistics
from functools import partial

import timm
import torch

from bench import masking
from bench.benchmarks.eval_kinds import eval_kinds
from bench.benchmarks.official_mae import plain_pretrain_kind
from bench.benchmarks.timing import MIN_WINDOW_S, Cycle, Kind, measure
from bench.data.datasets import ImageSet, make_synthetic
from bench.study.config import resolve, set_dotted
from bench.train.openblas import OpenBlasAttention, OpenBlasLinear
from bench.train.optim import scaled_lr, weight_decay_groups
from bench.train.pretrain import SplitStep, build_pretraining, epoch_generator


# ============================================================================ the config and data
def speed_config(preset: str, img_size: int, batch: int, ratio: float, precision: str,
                 model_overrides: dict | None = None) -> dict:
    """The resolved run config both pre-training paths read: the MAE preset (with overrides),
    synthetic images with crop_rand, random masks at `ratio`, the paper's recipe (the schema's
    defaults: blr 1.5e-4, weight decay 0.05, betas 0.9 / 0.95, norm_pixel) at batch `batch`."""
    return resolve({"method": "mae", "model": {"preset": preset, **(model_overrides or {})},
                    "data": {"name": "synthetic", "img_size": img_size, "augmentation": "crop_rand"},
                    "masking": {"strategy": "random", "ratio": ratio},
                    "pretrain": {"batch_size": batch, "precision": precision, "target": "norm_pixel"}})


def synthetic_set(n: int, channels: int, size: int) -> ImageSet:
    """n uint8 C×size×size images (bench.data.datasets's synthetic gratings), with their mean and std."""
    images, labels, _ = make_synthetic("train", n=n, size=size)
    images = torch.from_numpy(images)
    if channels != 3:
        images = images.float().mean(dim=1, keepdim=True).round().to(torch.uint8).expand(-1, channels, -1, -1)
    train_set = ImageSet("synthetic", images.contiguous(), torch.from_numpy(labels), 10)
    train_set.mean, train_set.std = tuple(train_set.mean[:channels]), tuple(train_set.std[:channels])
    return train_set


def initial_weights(cfg: dict, train_set: ImageSet, device: torch.device) -> tuple[dict, dict, dict]:
    """The weights every kind starts from — the method's model as pre-training builds it (seeded by
    cfg['seed']) — the encoder's share of them, which the eval kinds start from, and each kind's
    GFLOP per image (train steps 3 × forward: pre-training at the mask ratio, the evals' encoder
    over every patch; a probe step on cached features ~0)."""
    method, model, step = build_pretraining(cfg, train_set, device)
    step.split_step.close()
    pretrain = method.flops_per_image(model, cfg["masking"]["ratio"])["total"] / 1e9
    encoder = method.flops_per_image(model, 0.0)["encoder"] / 1e9
    gflops = {"pretrain": 3 * pretrain, "encoder_forward": encoder, "linear_probe_step_recomputed": encoder,
              "finetune_step": 3 * encoder}
    return model.state_dict(), method.encoder_state(model), gflops


def _with(cfg: dict, changes: dict) -> dict:
    """A copy of the resolved config with dotted keys changed."""
    cfg = copy.deepcopy(cfg)
    for key, value in changes.items():
        set_dotted(cfg, key, value)
    return cfg


# ============================================================================ our step kinds
def _flavour(optimizer: torch.optim.Optimizer) -> str:
    return "fused" if optimizer.defaults.get("fused") else "foreach" if optimizer.defaults.get("foreach") else "default"


def fast_pretrain_kind(cfg: dict, train_set: ImageSet, device: torch.device, state: dict, compile: bool = False, *,
                       fused: bool = True, full_pred: bool = False, data: bool = True, split: bool = True,
                       openblas: tuple[str, ...] = ("linear", "attention"), name: str | None = None) -> Kind:
    """bench.train.pretrain's step, built by build_pretraining(cfg, ...) and called as the pre-training
    loop calls it, `step(uint8 images, lr, generator)`, on batches cut from `train_set` on the device.

    Ablations, each through the real step (the precision one is pretrain.precision in `cfg`):
      fused=False     step.optimizer swapped for torch's default AdamW (single-tensor loop on the
                      CPU) over the same parameter groups, lr and betas.
      full_pred=True  step.full_pred: the decoder predicts all patches.
      split=False     step.split_step replaced by SplitStep(model, 1): one forward and backward of
                      the whole batch, not one sub-batch per CPU thread.
      openblas=(...)  built with build_pretraining(openblas=...) less "linear" or "attention": the
                      linear layers' products on torch's own sgemm, or attention by torch's fused
                      kernel, not numpy's OpenBLAS (bench.train.openblas).
      data=False      the same uint8 batch every step, with data.augmentation 'none' in the config:
                      no batch gather and no crop. What cannot go through the step: it still turns
                      the uint8 batch into floats and normalises it every step (two element-wise
                      passes an augmented-once batch would skip).
    """
    if not data:
        cfg = _with(cfg, {"data.augmentation": "none"})
    pcfg = cfg["pretrain"]
    batch, lr = pcfg["batch_size"], scaled_lr(pcfg["blr"], pcfg["batch_size"])
    _, model, step = build_pretraining(cfg, train_set, device, compile=compile, openblas=openblas)
    model.load_state_dict(state)
    model.train()
    if not fused:
        step.optimizer = torch.optim.AdamW(weight_decay_groups(model, pcfg["weight_decay"]), lr=lr,
                                           betas=(pcfg["beta1"], pcfg["beta2"]))
    if not split and step.split_step.parts > 1:
        step.split_step.close()
        step.split_step = SplitStep(step.split_step.model, 1, pcfg["precision"])
    if full_pred:
        step.full_pred = True
    batches = Cycle(lambda epoch: train_set.batches(batch, shuffle=True, seed=cfg["seed"], epoch=epoch,
                                                    drop_last=True, device=device))
    fixed = None if data else batches.next()[0]
    gen = epoch_generator(cfg["seed"], 0, device)

    def one_step():
        step(batches.next()[0] if data else fixed, lr, gen)

    kind = Kind(name or ("pretrain_fast_compiled" if compile else "pretrain_fast"), one_step, batch, device)
    kind.close = step.split_step.close
    length = model.grid ** 2
    masked = masking.num_masked(length, cfg["masking"]["ratio"])
    kind.info = {"step": "bench.train.pretrain.PretrainStep (build_pretraining)",
                 "openblas_linears": sum(isinstance(m, OpenBlasLinear) for m in model.modules()),
                 "openblas_attentions": sum(isinstance(m, OpenBlasAttention) for m in model.modules()),
                 "data": "uint8 batches on the device, batched crop_rand (affine_grid + grid_sample)" if data
                 else "one uint8 batch, augmentation none", "optimizer": f"AdamW ({_flavour(step.optimizer)})",
                 "step_parts": step.split_step.parts, "precision": pcfg["precision"],
                 "visible_tokens": length - masked, "decoder_predicts": length if full_pred else masked}
    return kind


def ablation_kinds(cfg: dict, train_set: ImageSet, device: torch.device, workers: int, state: dict) -> list[Kind]:
    """What each difference between the two paths is worth, each measured in the same rounds."""
    fast = partial(fast_pretrain_kind, cfg, train_set, device, state)
    kinds = [
        plain_pretrain_kind(cfg, train_set, device, workers, state, data=False),
        fast(data=False, name="ablation:fast_without_data"),
        fast(fused=False, name="ablation:fast_default_adamw"),
        fast(full_pred=True, name="ablation:fast_full_pred"),
        fast(split=False, name="ablation:fast_unsplit"),
        fast(openblas=("attention",), name="ablation:fast_torch_linear"),
        fast(openblas=("linear",), name="ablation:fast_torch_attention"),
    ]
    if cfg["pretrain"]["precision"] != "fp32":
        kinds.append(fast_pretrain_kind(_with(cfg, {"pretrain.precision": "fp32"}), train_set, device, state,
                                        name="ablation:fast_fp32"))
    return kinds


# ============================================================================ the report
def speed_report(preset: str, batch: int = 256, ratio: float = 0.75, device: str = "cpu", steps: int = 20,
                 img_size: int = 32, channels: int = 3, compile: bool = False, *, warmup: int = 2,
                 windows: int | None = None, workers: int | None = None, evals: bool = True,
                 model_overrides: dict | None = None, min_window_s: float = MIN_WINDOW_S,
                 ablations: bool = False, threads: int | None = None, precision: str | None = None) -> list[dict]:
    """Images/s of each step kind for `preset` (see the module doc); one dict per kind.

    steps: timed steps per kind, split over `windows` rounds (default min(5, steps)).
    workers: the plain path's DataLoader workers (default min(10, cores): official default 10).
    model_overrides: model keys replacing the preset's (tests use a tiny model).
    ablations: also the 'ablation:*' kinds, each path less one of its differences.
    threads: torch threads for every kind (default: as set; the DataLoader workers use one each).
    precision: our path's, "fp32" or "bf16" (default: bf16 on a GPU, fp32 on the CPU — the
    issue's CPU target is fp32). The plain path is the official recipe's: fp32 on the CPU,
    fp16 autocast with a loss scaler on a GPU.
    """
    precision = precision or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _speed_report(preset, batch, ratio, device, steps, img_size, channels, compile, warmup, windows,
                             workers, evals, model_overrides, min_window_s, ablations, precision)
    finally:
        torch.set_num_threads(previous_threads)


def _speed_report(preset, batch, ratio, device, steps, img_size, channels, compile, warmup, windows, workers,
                  evals, model_overrides, min_window_s, ablations, precision) -> list[dict]:
    dev = torch.device(device)
    windows = windows or max(1, min(5, steps))
    workers = min(10, os.cpu_count() or 1) if workers is None else workers
    cfg = speed_config(preset, img_size, batch, ratio, precision, model_overrides)
    train_set = synthetic_set(batch * (steps + warmup + 4 * windows + 2), channels, img_size)
    state, encoder_state, gflops = initial_weights(cfg, train_set, dev)
    kinds = [plain_pretrain_kind(cfg, train_set, dev, workers, state, fused_attn=True),
             plain_pretrain_kind(cfg, train_set, dev, workers, state),
             fast_pretrain_kind(cfg, train_set, dev, state)]
    try:
        compile_s = None
        if compile:
            compiled = fast_pretrain_kind(cfg, train_set, dev, state, compile=True)
            kinds.append(compiled)
            compile_s = compiled.run(1)  # the first call compiles
        if ablations:
            kinds += ablation_kinds(cfg, train_set, dev, workers, state)
        if evals:
            kinds += eval_kinds(cfg, train_set, batch, dev, encoder_state)
        load_before = os.getloadavg()[0]
        measure(kinds, steps, warmup, windows, min_window_s)
        load_after = os.getloadavg()[0]
    finally:
        for kind in kinds:
            kind.close()

    m = cfg["model"]
    base_config = {
        "preset": preset, "img": img_size, "channels": channels, "patch_size": m["patch_size"],
        "encoder": {"dim": m["embed_dim"], "depth": m["depth"], "heads": m["num_heads"]},
        "decoder": {"dim": m["decoder_embed_dim"], "depth": m["decoder_depth"], "heads": m["decoder_num_heads"]},
        "mlp_ratio": m["mlp_ratio"], "patches": (img_size // m["patch_size"]) ** 2, "batch": batch,
        "ratio": ratio, "device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "timm": timm.__version__, "cpu": platform.processor() or platform.machine(),
        "loadavg_1min": [round(load_before, 2), round(load_after, 2)],
    }
    official, plain, fast = kinds[:3]

    def ratio(kind: Kind, to: Kind, scale: float = 1.0) -> float:  # the median of the per-round ratios
        return round(statistics.median([scale * r / p for r, p in zip(kind.rates, to.rates)]), 4)

    rows = []
    for kind in kinds:
        row = {"kind": kind.name, "images_per_s": round(statistics.median(kind.rates), 2)}
        if kind.name.startswith(("pretrain", "ablation")):
            row["ratio_to_official"] = ratio(kind, official)
            row["ratio_to_plain"] = ratio(kind, plain)
        per_image = gflops["pretrain"] if kind.name.startswith("pretrain") else gflops.get(kind.name)
        if per_image is not None:  # the work a step does, 3 × forward for a train step
            row["gflop_per_image"] = float(f"{per_image:.6g}")
            row["gflop_per_s"] = float(f"{row['images_per_s'] * per_image:.4g}")  # 4 significant figures
            if not kind.name.startswith("pretrain"):  # an eval's GFLOP/s against the pre-training step's
                row["gflop_per_s_to_pretrain"] = ratio(kind, fast, per_image / gflops["pretrain"])
        if kind.name == "linear_probe_step_cached":
            recomputed = next(k for k in kinds if k.name == "linear_probe_step_recomputed")
            row["ratio_to_recomputed"] = round(statistics.median(
                [r / p for r, p in zip(kind.rates, recomputed.rates)]), 2)
        config = dict(base_config, steps_per_window=kind.steps_per_window, windows=len(kind.rates),
                      warmup=warmup, **kind.info)
        if kind.name == "pretrain_fast_compiled":
            config["compile_s"] = round(compile_s, 2)
        row["config"] = config
        row["window_images_per_s"] = [round(r, 2) for r in kind.rates]
        rows.append(row)
    return rows
