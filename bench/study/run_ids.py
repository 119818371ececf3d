"""Run ids: the hash of a resolved config, and the keys added to the schema after results existed.

    run_id(cfg)             12 hex digits of the SHA-256 of the config as hashed_part leaves it
    hashed_part(cfg)        the config without the HASH_EXEMPT keys at the values that compute what
                            runs computed before those keys existed (so those runs keep their ids)
    with_added_later(cfg)   a stored config written before some ADDED_LATER keys, with them at their
                            old values (what the run computed with), to read and compare like today's

A run id moves when what the run computes moves: a changed default changes it (the hash covers
values, not overrides); a new key does not, while it holds the value every earlier run had.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

from bench.core.hashing import digest
from bench.data import is_default_identity


# Keys added to the schema after results existed, with the value at which a run computes what it
# computed before the key was there. A stored config without one reads as holding that value
# (`with_added_later`). Those in HASH_EXEMPT came after run ids had to stay stable: the hash leaves
# them out where their predicate — called as (value, the section holding the key) — says the value
# computes what runs computed before the key existed, so those runs keep their ids and folders.
# (The first four came before this rule: runs stored before them have older ids, which the report
# reconciles.)
ADDED_LATER = {
    "model.mask_token_in_encoder": False,
    "pretrain.target_params": {},
    "evals.finetune.blocks": None,
    "evals.knn": {"enabled": False, "k": 20, "temperature": 0.07, "feature": "cls"},
    "pretrain.precision": "fp32",
    "method": "mae",
    "data.identity": None,
    "baseline": None,
    "model.head": "decoder",
    "pretrain.loss": None,
    "pretrain.loss_on": "masked",
    "pretrain.drop_path": 0.0,
    "pretrain.clip_grad": None,
    "model.depths": None,
    "model.stage_num_heads": None,
    "model.window_size": None,
    "model.backbone": None,
    "model.sparse": None,
    "model.densify": None,
    "model.hierarchical": None,
    "pretrain.optimizer": "adamw",
    "pretrain.weight_decay_end": None,
    "data.frames": None,
    "data.frame_stride": 1,
    "model.tubelet_size": None,
    "pretrain.accum_iter": 1,
    "evals.finetune.accum_iter": 1,
    "evals.finetune.mixup": 0.0,
    "evals.finetune.cutmix": 0.0,
    "evals.finetune.rand_augment": None,
    "evals.finetune.reprob": 0.0,
}


def _at_old_value(dotted: str) -> Callable[[Any, dict], bool]:
    """The usual rule: left out of the hash while it holds its ADDED_LATER value."""
    return lambda value, section: value == ADDED_LATER[dotted]


HASH_EXEMPT: dict[str, Callable[[Any, dict], bool]] = {
    "pretrain.precision": _at_old_value("pretrain.precision"),
    "method": _at_old_value("method"),
    "baseline": _at_old_value("baseline"),
    # null (not identified) or the dataset's registered default identity (Debian's Fashion-MNIST,
    # whole): the data every run had before the key existed. Any other data, or a limited subset
    # (whose identity holds the subset rule), is hashed.
    "data.identity": lambda value, section: is_default_identity(section.get("name"), value),
    # BEiT and SimMIM's keys: at these values a run computes what every MAE run computed before them
    "model.head": _at_old_value("model.head"),
    "pretrain.loss": _at_old_value("pretrain.loss"),
    "pretrain.loss_on": _at_old_value("pretrain.loss_on"),
    "pretrain.drop_path": _at_old_value("pretrain.drop_path"),
    "pretrain.clip_grad": _at_old_value("pretrain.clip_grad"),
    # the Swin's keys (bench.methods.swin): null on every ViT preset, the only presets before them
    "model.depths": _at_old_value("model.depths"),
    "model.stage_num_heads": _at_old_value("model.stage_num_heads"),
    "model.window_size": _at_old_value("model.window_size"),
    # SparK's keys (bench.methods.spark): null on every ViT and Swin preset; AdamW with a constant
    # weight decay, the only pre-training optimizer before them
    "model.backbone": _at_old_value("model.backbone"),
    "model.sparse": _at_old_value("model.sparse"),
    "model.densify": _at_old_value("model.densify"),
    "model.hierarchical": _at_old_value("model.hierarchical"),
    "pretrain.optimizer": _at_old_value("pretrain.optimizer"),
    "pretrain.weight_decay_end": _at_old_value("pretrain.weight_decay_end"),
    # VideoMAE's keys (bench.methods.videomae): images (no frames, no tubelet) are what every run
    # before them saw
    "data.frames": _at_old_value("data.frames"),
    "data.frame_stride": _at_old_value("data.frame_stride"),
    "model.tubelet_size": _at_old_value("model.tubelet_size"),
    # gradient accumulation: one micro-batch per step is what every run before it did
    "pretrain.accum_iter": _at_old_value("pretrain.accum_iter"),
    "evals.finetune.accum_iter": _at_old_value("evals.finetune.accum_iter"),
    # the rest of MAE's fine-tune recipe (bench.train.finetune_recipe): off is what every run before it did
    "evals.finetune.mixup": _at_old_value("evals.finetune.mixup"),
    "evals.finetune.cutmix": _at_old_value("evals.finetune.cutmix"),
    "evals.finetune.rand_augment": _at_old_value("evals.finetune.rand_augment"),
    "evals.finetune.reprob": _at_old_value("evals.finetune.reprob"),
}


def _edit_at(cfg: dict, dotted: str, edit: Callable[[dict, str], bool]) -> dict:
    """cfg with `edit(parent, key)` applied at a dotted key, copying only the dicts on its path;
    cfg itself when the path is missing or edit returns False."""
    *path, last = dotted.split(".")
    nodes = [cfg]
    for part in path:
        node = nodes[-1].get(part)
        if not isinstance(node, dict):
            return cfg
        nodes.append(node)
    parent = dict(nodes[-1])
    if not edit(parent, last):
        return cfg
    for node, part in zip(reversed(nodes[:-1]), reversed(path)):
        parent = {**node, part: parent}
    return parent


def hashed_part(cfg: dict) -> dict:
    """The config as run_id hashes it: without the HASH_EXEMPT keys whose predicate says they
    compute what runs computed before them."""
    def drop_if_old(parent: dict, key: str) -> bool:
        if key in parent and exempt(parent[key], parent):
            del parent[key]
            return True
        return False
    for dotted, exempt in HASH_EXEMPT.items():
        cfg = _edit_at(cfg, dotted, drop_if_old)
    return cfg


def with_added_later(cfg: dict) -> dict:
    """A stored config written before some ADDED_LATER keys existed, with them at their old values
    (what the run computed with), so it reads — and compares — like one written today."""
    def fill(parent: dict, key: str) -> bool:
        if key in parent:
            return False
        parent[key] = copy.deepcopy(ADDED_LATER[dotted])
        return True
    for dotted in ADDED_LATER:
        cfg = _edit_at(cfg, dotted, fill)
    return cfg


def run_id(cfg: dict) -> str:
    """12 hex digits of the SHA-256 of the resolved config (key order does not matter)."""
    return digest(hashed_part(cfg))
