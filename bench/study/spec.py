"""Ablation specs: a short YAML file expanded into resolved run configs.

    name: quickstart                    # the study; results go to results/<name>/
    description: ...
    base: {data: ..., model: ..., masking: ..., pretrain: ..., evals: ...}   # defaults fill the rest
    grid:                               # dotted keys -> lists, expanded as a product
      masking.strategy: [random, block, grid]
    zip:                                # groups of keys that vary together (equal-length lists)
      - {masking.strategy: [block, block], masking.ratio: [0.5, 0.75]}
    seeds: 3                            # or a list: [0, 1, 2]
    launch: {executor: local, parallel: 2, timeout_min: 60}
    paper: {source: mae, subtable: table1f}   # the paper's numbers the report puts beside ours
    extends: _recipe.yaml               # a shared recipe (path relative to this file) this spec builds on
    profiles:                           # named variants of the same study, picked with --profile
      small: {base: {pretrain: {epochs: 5}}, grid: {...}, seeds: 3}
      small_long: {extends: small, base: {pretrain: {epochs: 20}}}   # a profile may build on another

A profile overlays the spec: its `base` merges into the base key by key, its `grid`, `zip`,
`seeds`, `launch` and `description` replace the spec's. Its runs are the study
`<name>-<profile>`, so the results of different scales never mix. A profile that `extends`
another profile is that one's overlay with its own merged over it (base key by key, the rest
replaced). A spec that `extends` another
file is merged over it the same way, mapping by mapping (lists replace).

Everything is validated before anything runs; a problem stops with one line naming the file,
the key and what is allowed.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.core.errors import ConfigError
from bench.core.hashing import canonical_json
from bench.study.config import is_known_key, resolve, resolve_launch, run_id, set_dotted

SPEC_KEYS = ("name", "description", "base", "grid", "zip", "seeds", "launch", "profiles", "paper", "extends")
PROFILE_KEYS = ("description", "base", "grid", "zip", "seeds", "launch", "extends")


@dataclass
class Run:
    config: dict
    run_id: str
    varying: dict  # the values of the varying keys for this run (seed included)


@dataclass
class Study:
    name: str
    description: str
    path: str
    runs: list[Run]
    axes: list[str]  # the dotted keys that vary (seed excluded)
    zip_groups: list[list[str]] = field(default_factory=list)  # keys that vary together
    launch: dict = field(default_factory=dict)
    paper: dict | None = None  # {source: mae, subtable: table1f}: the paper's numbers the report compares with


def _load_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError("<file>", f"cannot read the spec ({err.strerror})", str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise ConfigError("<yaml>", f"not valid YAML at {where}: {getattr(err, 'problem', err)}", str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("<top>", f"a spec is a mapping with keys {', '.join(SPEC_KEYS)}", str(path))
    return data


def _axis_lists(mapping, where: str) -> dict[str, list]:
    if not isinstance(mapping, dict):
        raise ConfigError(where, "must be a mapping of dotted config keys to lists of values")
    out = {}
    for key, values in mapping.items():
        if not isinstance(key, str) or not is_known_key(key) or key == "seed":
            hint = "use `seeds` for seeds" if key == "seed" else "a dotted config key such as masking.ratio"
            raise ConfigError(f"{where}.{key}", f"unknown key; allowed: {hint}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.{key}", "must be a non-empty list of values")
        out[key] = values
    return out


def _seeds(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                 for s in value):
        return list(value)
    raise ConfigError("seeds", f"{value!r} is not allowed; allowed: a count >= 1 or a list of integers >= 0")


def load_study(path: str | Path, launch_overrides: dict | None = None, profile: str | None = None) -> Study:
    """Read, validate and expand a spec (in one of its profiles). Raises ConfigError naming the file."""
    path = Path(path)
    try:
        return _expand(apply_profile(_load_extended(path), profile), path, launch_overrides or {})
    except ConfigError as err:
        raise err if err.source else err.at(str(path)) from None


def _load_extended(path: Path, seen: tuple = ()) -> dict:
    """The spec at `path`, merged over the file it `extends` (recursively)."""
    spec = _load_yaml(path)
    parent = spec.pop("extends", None)
    if parent is None:
        return spec
    if not isinstance(parent, str):
        raise ConfigError("extends", f"{parent!r} is not allowed; allowed: a path to a spec, relative to this one")
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ConfigError("extends", f"{parent} extends itself")
    try:
        return _merge(_load_extended(parent_path, seen + (path.resolve(),)), spec)
    except ConfigError as err:
        raise err if err.source else err.at(str(parent_path)) from None


def _merge(base: dict, overlay: dict) -> dict:
    """`overlay` merged into a copy of `base`, mapping by mapping."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def apply_profile(spec: dict, profile: str | None) -> dict:
    """The spec as its profile `profile` describes it (None: the spec itself, profiles aside)."""
    profiles = spec.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ConfigError("profiles", "must map profile names to mappings with keys " + ", ".join(PROFILE_KEYS))
    spec = {k: v for k, v in spec.items() if k != "profiles"}
    if profile is None:
        return spec
    if profile not in profiles:
        raise ConfigError("profiles", f"{profile!r} is not defined; allowed: {', '.join(profiles) or 'none'}")
    overlay = _profile_overlay(profiles, profile, ())
    for key, value in overlay.items():
        spec[key] = _merge(spec.get(key) or {}, value) if key == "base" else copy.deepcopy(value)
    spec["name"] = f"{spec.get('name')}-{profile}"
    return spec


def _profile_overlay(profiles: dict, profile: str, seen: tuple) -> dict:
    """Profile `profile`'s overlay, with the profiles it extends merged under it."""
    overlay = profiles[profile]
    unknown = [k for k in overlay if k not in PROFILE_KEYS]
    if unknown:
        raise ConfigError(f"profiles.{profile}.{unknown[0]}", f"unknown key; allowed: {', '.join(PROFILE_KEYS)}")
    parent = overlay.get("extends")
    if parent is None:
        return overlay
    if parent not in profiles or parent in seen + (profile,):
        allowed = ", ".join(p for p in profiles if p not in seen + (profile,)) or "none"
        raise ConfigError(f"profiles.{profile}.extends", f"{parent!r} is not allowed; allowed: {allowed}")
    merged = dict(_profile_overlay(profiles, parent, seen + (profile,)))
    for key, value in overlay.items():
        if key != "extends":
            merged[key] = _merge(merged.get(key) or {}, value) if key == "base" else value
    return merged


def _expand(spec: dict, path: Path, launch_overrides: dict) -> Study:
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(str(unknown[0]), f"unknown key; allowed: {', '.join(SPEC_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError("name", f"{name!r} is not allowed; allowed: letters, digits, '_', '-', '.'")
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError("base", "must be a mapping with data, model, masking, pretrain, evals")
    grid = _axis_lists(spec.get("grid") or {}, "grid")
    zips = spec.get("zip") or []
    if not isinstance(zips, list):
        raise ConfigError("zip", "must be a list of groups, each a mapping of keys to equal-length lists")
    zip_groups = []
    for i, group in enumerate(zips):
        group = _axis_lists(group, f"zip[{i}]")
        lengths = {len(v) for v in group.values()}
        if len(lengths) > 1:
            raise ConfigError(f"zip[{i}]", f"lists of unequal lengths {sorted(lengths)}; keys in a group vary together")
        clash = set(group) & (set(grid) | {k for g in zip_groups for k in g})
        if clash:
            raise ConfigError(f"zip[{i}].{sorted(clash)[0]}", "is already varied elsewhere in the spec")
        zip_groups.append(group)
    seeds = _seeds(spec.get("seeds"))
    paper = spec.get("paper")
    if paper is not None and not (isinstance(paper, dict) and set(paper) == {"source", "subtable"}
                                  and all(isinstance(v, str) for v in paper.values())):
        raise ConfigError("paper", f"{paper!r} is not allowed; allowed: a mapping {{source: mae, subtable: table1f}}")
    launch = resolve_launch({**(spec.get("launch") or {}), **launch_overrides})

    # every axis: a list of {key: value} choices; the product of the axes is the study
    axes = [[{key: value} for value in values] for key, values in grid.items()]
    axes += [[dict(zip(group, combo)) for combo in zip(*group.values())] for group in zip_groups]
    axes.append([{"seed": s} for s in seeds] or [{}])

    runs, seen = [], set()
    for combo in itertools.product(*axes):
        partial = copy.deepcopy(base)
        varying = {}
        for choice in combo:
            for key, value in choice.items():
                set_dotted(partial, key, value)
                varying[key] = value
        config = resolve(partial)
        rid = run_id(config)
        if rid in seen:  # two grid points that resolve to the same config run once
            continue
        seen.add(rid)
        runs.append(Run(config, rid, varying))
    varied = [k for k in list(grid) + [k for g in zip_groups for k in g]
              if len({canonical_json({"v": r.varying.get(k)}) for r in runs}) > 1]
    return Study(name=name, description=str(spec.get("description") or ""), path=str(path),
                 runs=runs, axes=varied, launch=launch, paper=paper,
                 zip_groups=[[k for k in g if k in varied] for g in zip_groups if len([k for k in g if k in varied]) > 1])
