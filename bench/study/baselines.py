"""The baselines every study measures beside its settings, with the same eval recipe, data and seeds:

    random_init   no pre-training: the method's encoder as initialised — fine-tune from scratch,
                  linear probe and k-NN on random features
    raw_pixels    the linear probe's recipe (and k-NN) on the raw pixels; no fine-tune

A baseline's config is a run's config with `baseline` set and what it does not use put back to
the defaults — masking, pre-training, the decoder or head —, every block fine-tuned and the
linear probe on (a study that probes none of its settings, MAE Figure 9, still shows all three
baselines, at the recipe's probe), so every setting of a study (and every study
with the same model, data, evals and seed) shares one baseline run per seed. Their results are
also kept in the shared cache (`results/_cache/baselines`): a study pays for a baseline once.
A spec asks for them with `baselines: true` (every committed spec does: the quickstart, the
masking comparison and each method's `_recipe.yaml`); a spec without the key has none.
"""
from __future__ import annotations

import copy

from bench.study.config import BASELINES, resolve
from bench.study.run_ids import run_id

DECODER_KEYS = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")


def baseline_config(config: dict, kind: str) -> dict:
    """The resolved config of `kind`'s baseline for the run config `config`."""
    partial = copy.deepcopy(config)
    partial["baseline"] = kind
    partial["masking"], partial["pretrain"] = {}, {}
    for key in DECODER_KEYS:
        partial["model"][key] = None  # the preset's: the decoder is not used
    partial["model"]["mask_token_in_encoder"] = False
    partial["model"]["head"] = None  # the method's: no head is used either
    partial["evals"]["finetune"]["blocks"] = None  # from scratch, every block trains (MAE Fig. 9's runs share it)
    partial["evals"]["linear_probe"]["enabled"] = True  # at the recipe's probe, also where the settings skip it
    if kind == "raw_pixels":
        partial["evals"]["finetune"]["enabled"] = False  # a linear classifier is the probe's recipe
    return resolve(partial)


def baseline_runs(runs: list, make_run) -> list:
    """One run per distinct baseline config of `runs` (Run objects), built by make_run(config, id, varying)."""
    out, seen = [], set()
    for run in runs:
        for kind in BASELINES:
            config = baseline_config(run.config, kind)
            rid = run_id(config)
            if rid not in seen:
                seen.add(rid)
                out.append(make_run(config, rid, {"baseline": kind, "seed": config["seed"]}))
    return out
