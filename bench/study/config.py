"""Run configuration: the schema with the papers' defaults, and validation.

A run config is a nested dict with the sections `data`, `model`, `masking`, `pretrain`,
`evals`, a `method` and a `seed`. `resolve()` validates a partial config and fills in every key — the
model preset's numbers and the masking strategy's parameters included — so the resolved
config alone says everything a run depends on; bench.study.run_ids hashes it into the run id
(and keeps the ids of runs made before a key was added). `data.identity` (the digest of the
data read, bench.data.identify) is filled in by load_study.

Launch settings (executor, parallelism, SLURM resources, device, threads) live in a separate
`launch` section: they decide where a run executes, not what it computes, so they are not
hashed.
"""
from __future__ import annotations

import copy
from typing import Any

from bench.core.errors import ConfigError
from bench.core.options import Option, short_repr
from bench import masking, targets
from bench.data import dataset_entry, list_augmentations, list_datasets
from bench.masking import list_strategies
from bench.methods import list_methods, list_presets
from bench.methods import preset as preset_numbers
from bench.targets import list_targets
from bench.study.model_checks import HEADS, LOSSES, check_arch, check_loss, check_video, resolve_head


SEED_MAX = 2 ** 32 - 1  # torch's generators take seed * 1_000_003 + ...: kept well inside 64 bits

_MODEL_KEYS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
               "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "depths", "stage_num_heads", "window_size",
               "backbone", "tubelet_size")

# ----------------------------------------------------------------------------- the schema
BASELINES = ("random_init", "raw_pixels")  # the baseline runs a study can add (bench.study.baselines)

SCHEMA: dict = {
    "method": Option("mae", str, choices=list_methods, help="the pre-training method (bench.methods)"),
    "baseline": Option(None, str, choices=BASELINES, nullable=True,
                       help="a baseline run, no pre-training: the method's random-init encoder (fine-tune = "
                            "from scratch), or the raw pixels; the study adds them (bench.study.baselines)"),
    "seed": Option(0, int, low=0, high=SEED_MAX, help="seeds weights, data order, augmentation and masks"),
    "data": {
        "name": Option("fashion_mnist", str, choices=list_datasets),
        "img_size": Option(32, int, low=8, help="side of the model's input, in pixels"),
        "train_limit": Option(None, int, low=1, nullable=True,
                              help="use N training images: a seeded, class-stratified subset (bench.data.subset)"),
        "test_limit": Option(None, int, low=1, nullable=True,
                             help="use N held-out images: a seeded, class-stratified subset"),
        "augmentation": Option("crop_rand", str, choices=list_augmentations,
                               help="pretraining augmentation (MAE Table 1e)"),
        "frames": Option(None, int, low=1, nullable=True,
                         help="frames per clip the model sees (a video dataset, method videomae; a multiple of "
                              "model.tubelet_size); null = images"),
        "frame_stride": Option(1, int, low=1, help="τ: a clip takes every τ-th frame of the video (VideoMAE: 4 on "
                                                  "Kinetics, 2 on Something-Something); 1 with images"),
        "identity": Option(None, str, nullable=True,
                           help="the digest of the data read (bench.data.identify), filled in by load_study; "
                                "null = not identified"),
    },
    "model": {
        "preset": Option(None, str, choices=list_presets, nullable=True,
                         help="the model's size; null = the method's first (its tiny ViT for these CPUs)"),
        "patch_size": Option(None, int, low=1, nullable=True),
        "embed_dim": Option(None, int, low=1, nullable=True),
        "depth": Option(None, int, low=1, nullable=True),
        "num_heads": Option(None, int, low=1, nullable=True),
        "mlp_ratio": Option(None, float, low=0.0, nullable=True, open_interval=False),
        "decoder_embed_dim": Option(None, int, low=1, nullable=True),
        "decoder_depth": Option(None, int, low=1, nullable=True),
        "decoder_num_heads": Option(None, int, low=1, nullable=True),
        "depths": Option(None, list, nullable=True, help="a Swin preset's blocks per stage (bench.methods.swin)"),
        "stage_num_heads": Option(None, list, nullable=True, help="a Swin preset's attention heads per stage"),
        "window_size": Option(None, int, low=1, nullable=True, help="a Swin preset's attention window, in tokens"),
        # SparK's CNN keys (bench.methods.spark; a preset with `arch: cnn`): null on every other preset
        "backbone": Option(None, str, nullable=True, help="a CNN preset's timm model (resnet*, convnext*)"),
        "sparse": Option(None, bool, nullable=True,
                         help="SparK: masked dense convolutions emulate sparse ones (true, the paper's) or a "
                              "dense CNN on zeroed pixels (false, zero-outing); null = true with a CNN preset"),
        "densify": Option(None, bool, nullable=True,
                          help="SparK: fill each scale's masked positions with a learned mask token before the "
                               "decoder; null = true with a CNN preset"),
        "hierarchical": Option(None, bool, nullable=True,
                               help="SparK: the decoder takes every stage's features (true) or the last stage's "
                                    "only (false); null = true with a CNN preset"),
        "tubelet_size": Option(None, int, low=1, nullable=True,
                               help="VideoMAE: frames per cube (tubelet x patch x patch px is one token); null on "
                                    "image presets"),
        "mask_token_in_encoder": Option(False, bool, help="MAE Table 1c 'w/ [M]': the encoder sees all L patches, "
                                                          "the masked ones replaced by a learned mask token"),
        "head": Option(None, str, choices=HEADS, nullable=True,
                       help="what predicts the target from the encoder's tokens: MAE's decoder, a linear layer "
                            "(BEiT, SimMIM) or a 2-layer MLP; null = the method's paper's"),
    },
    "masking": {
        "strategy": Option("random", str, choices=lambda: list_strategies(video=True)),
        "ratio": Option(0.75, float, low=0.0, high=1.0, open_interval=True),
        "params": Option({}, dict, help="the strategy's own parameters; defaults filled in"),
    },
    "pretrain": {  # MAE's pre-training recipe (paper, Table 8)
        "epochs": Option(800, int, low=1),
        "warmup_epochs": Option(40, int, low=0),
        "batch_size": Option(4096, int, low=1, help="effective batch; lr = blr * batch_size / 256"),
        "blr": Option(1.5e-4, float, low=0.0, open_interval=False),
        "min_lr": Option(0.0, float, low=0.0),
        "weight_decay": Option(0.05, float, low=0.0),
        "beta1": Option(0.9, float, low=0.0, high=1.0),
        "beta2": Option(0.95, float, low=0.0, high=1.0),
        "target": Option("norm_pixel", str, choices=list_targets,
                         help="what the decoder predicts for a masked patch (MAE Table 1d)"),
        "target_params": Option({}, dict, help="the target's own parameters; defaults filled in"),
        "loss": Option(None, str, choices=LOSSES, nullable=True,
                       help="the loss of a pixel-like target (SimMIM: l1); null = the target's own (MSE; "
                            "cross-entropy for tokens)"),
        "loss_on": Option("masked", str, choices=("masked", "all"),
                          help="score the masked patches only, or all (BEiT Table 4 'recover 100%')"),
        "drop_path": Option(0.0, float, low=0.0, high=1.0, help="stochastic depth in the encoder (BEiT: 0.1)"),
        "clip_grad": Option(None, float, low=0.0, nullable=True, open_interval=True,
                            help="clip the gradient's global norm (BEiT: 3.0, SimMIM: 5.0); null = no clipping"),
        "optimizer": Option("adamw", str, choices=("adamw", "lamb"),
                            help="adamw (MAE, BEiT, SimMIM) or LAMB (SparK: timm.optim.Lamb, its own grad "
                                 "clipping off; pretrain.clip_grad clips)"),
        "weight_decay_end": Option(None, float, low=0.0, nullable=True,
                                   help="cosine weight-decay schedule from weight_decay to this value over the "
                                        "run (SparK: 0.04 -> 0.2); null = constant weight_decay"),
        "precision": Option("fp32", str, choices=("fp32", "bf16"),
                            help="bf16: the forward and backward under bfloat16 autocast (weights, "
                                 "optimizer state and the loss's reduction stay fp32) — the GPU recipe"),
        "accum_iter": Option(1, int, low=1, help="gradient accumulation (MAE's accum_iter): each process's share "
                                                 "of batch_size in this many micro-batches; the same update"),
    },
    "evals": {
        "linear_probe": {  # MAE Table 10: LARS, blr 0.1, no weight decay, BN without affine
            "enabled": Option(True, bool),
            "epochs": Option(90, int, low=1),
            "warmup_epochs": Option(10, int, low=0),
            "batch_size": Option(16384, int, low=1),
            "optimizer": Option("lars", str, choices=("lars", "sgd", "adamw")),
            "blr": Option(0.1, float, low=0.0),
            "weight_decay": Option(0.0, float, low=0.0),
            "feature": Option("cls", str, choices=("cls", "avgpool"),
                              help="which encoder output the probe reads"),
            "augmentation": Option("crop_rand", str, choices=list_augmentations,
                                   help="'none' lets the probe train on features computed once"),
        },
        "finetune": {  # MAE Table 9: AdamW, blr 1e-3, layer-wise lr decay 0.75
            "enabled": Option(True, bool),
            "epochs": Option(50, int, low=1),
            "warmup_epochs": Option(5, int, low=0),
            "batch_size": Option(1024, int, low=1),
            "blr": Option(1e-3, float, low=0.0),
            "min_lr": Option(1e-6, float, low=0.0),
            "layer_decay": Option(0.75, float, low=0.0, high=1.0),
            "weight_decay": Option(0.05, float, low=0.0),
            "drop_path": Option(0.1, float, low=0.0, high=1.0),
            "label_smoothing": Option(0.1, float, low=0.0, high=1.0),
            "feature": Option("avgpool", str, choices=("cls", "avgpool")),
            "augmentation": Option("crop_rand", str, choices=list_augmentations),
            "accum_iter": Option(1, int, low=1, help="gradient accumulation: each process's share of batch_size "
                                                     "in this many micro-batches; the same update"),
            "blocks": Option(None, float, low=0.0, nullable=True,
                             help="partial fine-tuning (MAE Fig. 9): tune only the last k blocks (0.5 = the MLP "
                                  "half of the last block; 0 = the head alone); null = all blocks"),
            # the rest of MAE's recipe (Table 9: 0.8, 1.0, rand-m9-mstd0.5-inc1, 0.25), off by default;
            # bench.train.finetune_recipe, from timm's Mixup, RandAugment and RandomErasing
            "mixup": Option(0.0, float, low=0.0, help="mixup alpha; with cutmix > 0, mixup or cutmix per batch "
                                                      "(switch prob 0.5), soft targets; 0 = off"),
            "cutmix": Option(0.0, float, low=0.0, help="cutmix alpha; 0 = off"),
            "rand_augment": Option(None, str, nullable=True, help="timm's RandAugment string, e.g. "
                                                                  "rand-m9-mstd0.5-inc1; null = off"),
            "reprob": Option(0.0, float, low=0.0, high=1.0, help="random erasing probability per sample "
                                                                 "(mode pixel, one box); 0 = off"),
        },
        "knn": {  # a weighted k-nearest-neighbour classifier on frozen features (cosine similarity)
            "enabled": Option(False, bool),
            "k": Option(20, int, low=1),
            "temperature": Option(0.07, float, low=0.0, open_interval=True),
            "feature": Option("cls", str, choices=("cls", "avgpool")),
        },
    },
}

LAUNCH_SCHEMA: dict = {
    "executor": Option("local", str, choices=("debug", "local", "slurm")),
    "parallel": Option(1, int, low=1, help="runs at a time (local) / array parallelism (slurm)"),
    "threads": Option(None, int, low=1, nullable=True, help="torch threads per run; null = cores / parallel"),
    "device": Option("auto", str, choices=("auto", "cpu", "cuda")),
    "compile": Option(False, bool, help="torch.compile the pre-training forward (the same math; worth it on a GPU)"),
    "data_root": Option(None, str, nullable=True, help="folder with the data; null = $MIMBENCH_DATA, then Debian's"),
    "timeout_min": Option(60, int, low=1),
    "partition": Option(None, str, nullable=True),
    "gpus_per_node": Option(0, int, low=0),
    "cpus_per_task": Option(None, int, low=1, nullable=True),
    "mem_gb": Option(None, float, low=0.0, nullable=True),
    "constraint": Option(None, str, nullable=True),
    "account": Option(None, str, nullable=True),
    "qos": Option(None, str, nullable=True),
    "additional": Option({}, dict, help="raw sbatch options"),
    "tasks_per_node": Option(1, int, low=1, help="slurm: processes per node (one per GPU for DDP)"),
    "nodes": Option(1, int, low=1),
    "checkpoint_every": Option(0, int, low=0, help="save a checkpoint every N pre-training epochs; 0 = only "
                                                   "when preempted (slurm)"),
    "max_requeues": Option(3, int, low=0, help="slurm: how many time-outs a run may be requeued after"),
}


def defaults(schema: dict = SCHEMA) -> dict:
    """The schema's defaults as a plain nested dict."""
    return {k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default) for k, v in schema.items()}


def _check_tree(tree: Any, schema: dict, prefix: str) -> dict:
    """Validate `tree` against `schema`; return a complete, normalised copy."""
    if not isinstance(tree, dict):
        raise ConfigError(prefix or "<top>", f"must be a mapping with keys {', '.join(schema)}")
    unknown = [k for k in tree if k not in schema]
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(key, f"unknown key; allowed here: {', '.join(schema)}")
    out = {}
    for name, sub in schema.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(sub, dict):
            out[name] = _check_tree(tree.get(name, {}), sub, key)
        else:
            value = tree.get(name, sub.default)
            if isinstance(value, (dict, list)):  # the only mutable values; a copy, never shared
                value = copy.deepcopy(value)
            out[name] = sub.check(key, value)
    return out


def resolve(partial: dict | None) -> dict:
    """Validate a (partial) run config and return the complete resolved config."""
    cfg = _check_tree(partial or {}, SCHEMA, "")
    model = cfg["model"]
    if model["preset"] is None:
        model["preset"] = list_presets(cfg["method"])[0]
    preset = preset_numbers(model["preset"], cfg["method"])
    for key in _MODEL_KEYS:
        if model[key] is None:
            model[key] = preset.get(key)
    if model["mlp_ratio"] is not None:  # a CNN preset (SparK) has none
        model["mlp_ratio"] = float(model["mlp_ratio"])
    check_arch(cfg, preset.get("arch", "vit"))
    resolve_head(cfg)
    check_video(cfg)
    if cfg["data"]["img_size"] % model["patch_size"]:
        raise ConfigError("data.img_size", f"{cfg['data']['img_size']} is not a multiple of "
                          f"model.patch_size {model['patch_size']}")
    for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
        if model[width] is not None and model[heads] is not None and model[width] % model[heads]:
            raise ConfigError(f"model.{heads}", f"{model[heads]} does not divide model.{width} {model[width]}")
    grid = cfg["data"]["img_size"] // model["patch_size"]
    if grid * grid < 2:
        raise ConfigError("data.img_size", f"{cfg['data']['img_size']} px is one patch of model.patch_size "
                          f"{model['patch_size']}; allowed: at least 2 patches (img_size >= 2 x patch_size)")
    cfg["masking"]["params"] = masking.resolve_params(
        cfg["masking"]["strategy"], cfg["masking"]["params"], cfg["masking"]["ratio"], (grid, grid))
    cfg["pretrain"]["target_params"] = targets.resolve_params(cfg["pretrain"]["target"], cfg["pretrain"]["target_params"])
    check_loss(cfg)
    blocks = cfg["evals"]["finetune"]["blocks"]
    if blocks is not None and blocks != 0.5 and (blocks != int(blocks) or blocks > model["depth"]):
        raise ConfigError("evals.finetune.blocks", f"{blocks!r} is not allowed; allowed: null, 0.5, or a whole "
                          f"number of blocks 0..{model['depth']}")
    check_finetune_recipe(cfg)
    for section in ("pretrain", "evals.finetune"):
        node = cfg
        for part in section.split("."):
            node = node[part]
        if node["batch_size"] % node["accum_iter"]:
            raise ConfigError(f"{section}.accum_iter", f"{node['accum_iter']} does not divide {section}.batch_size "
                              f"{node['batch_size']}; allowed: a divisor of the batch")
    for section in ("pretrain", "evals.linear_probe", "evals.finetune"):
        node = cfg
        for part in section.split("."):
            node = node[part]
        if node["warmup_epochs"] > node["epochs"]:
            raise ConfigError(f"{section}.warmup_epochs",
                              f"{node['warmup_epochs']} exceeds {section}.epochs {node['epochs']}")
    return cfg


def check_finetune_recipe(cfg: dict) -> None:
    """The fine-tune's RandAugment string parses with timm; mixup and cutmix pair a batch with its
    reverse, so they need an even batch."""
    ecfg = cfg["evals"]["finetune"]
    if ecfg["rand_augment"] is not None:
        from bench.train.finetune_recipe import check_rand_augment  # timm and torch: only when the key is set
        check_rand_augment(ecfg["rand_augment"])
    if (ecfg["mixup"] > 0 or ecfg["cutmix"] > 0) and ecfg["batch_size"] % 2:
        key = "mixup" if ecfg["mixup"] > 0 else "cutmix"
        raise ConfigError(f"evals.finetune.{key}", f"{ecfg[key]} pairs a batch with its reverse: needs an even "
                          f"evals.finetune.batch_size, not {ecfg['batch_size']}; allowed: 0 with an odd batch")


def check_fits(cfg: dict) -> None:
    """What a resolved config's parts must agree on that only the dataset knows: the target's
    parameters against the patch (patch_size² px × the dataset's channels). Raises a one-line
    ConfigError; `load_study` calls it for every run, so a job never fails on it."""
    channels = dataset_entry(cfg["data"]["name"]).channels
    targets.check_fits(cfg["pretrain"]["target"], cfg["pretrain"]["target_params"], cfg["model"]["patch_size"],
                       channels)


def check_partial(partial: dict, skip: tuple = ()) -> None:
    """Check every key of a partial config that it sets (unknown keys, types, ranges), without the
    checks across keys; `skip`: dotted keys (and what is under them) left to `resolve`."""
    if not isinstance(partial, dict):
        raise ConfigError("<top>", f"must be a mapping with keys {', '.join(SCHEMA)}")
    _check_set(partial, SCHEMA, "", skip)


def _check_set(tree: dict, schema: dict, prefix: str, skip: tuple) -> None:
    for name, value in tree.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if any(key == s or key.startswith(s + ".") for s in skip):
            continue
        sub = schema.get(name) if isinstance(name, str) else None
        if sub is None:
            raise ConfigError(key, f"unknown key; allowed here: {', '.join(schema)}")
        if isinstance(sub, dict):
            if not isinstance(value, dict):
                raise ConfigError(key, f"must be a mapping with keys {', '.join(sub)}")
            _check_set(value, sub, key, skip)
        else:
            sub.check(key, value)


def resolve_launch(partial: dict | None) -> dict:
    if partial is not None and not isinstance(partial, dict):
        raise ConfigError("launch", f"{short_repr(partial)} is not allowed; allowed: a mapping with keys "
                                    f"{', '.join(LAUNCH_SCHEMA)}")
    return _check_tree(partial or {}, LAUNCH_SCHEMA, "launch")


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(dotted, f"{part} is not a section")
    node[parts[-1]] = value


def is_known_key(dotted: str) -> bool:
    """True for a dotted key naming a schema leaf (or a key inside masking.params)."""
    node: Any = SCHEMA
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
        if isinstance(node, Option) and node.kind is dict:
            return True  # deeper keys are checked by the owner of the dict
    return isinstance(node, Option)


def probe_and_knn_share_features(evals: dict) -> bool:
    """Whether the linear probe's cached features are k-NN's too (both on, the same feature, the
    probe without augmentation): bench.train.features.frozen_features hands them on,
    bench.study.budget counts them once."""
    probe, knn_cfg = evals["linear_probe"], evals["knn"]
    return (probe["enabled"] and knn_cfg["enabled"] and probe["augmentation"] == "none"
            and probe["feature"] == knn_cfg["feature"])
