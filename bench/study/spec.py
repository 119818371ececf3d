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
the key as written there and what is allowed. The key says where the value came from:
`base.masking.ratio`, `profiles.small.base.pretrain.epochs` (a profile's base), `grid.masking.ratio[2]`
or `zip[0].masking.ratio[1]` (the grid's or zip's value at that index), `seeds[3]`; the file is the
one that wrote it (a recipe the spec `extends`, say). An error that only one grid point meets
names that point's values. A value the spec does not set is named by its config key, as the
default. The YAML is read strictly (bench.core.yamlio: YAML 1.2 numbers, no duplicate keys), a
study has at most MAX_RUNS runs, and `check_data` (which `mimbench plan` and `run` call) looks at
the data files before anything runs.

Each run's `data.identity` is filled in from the data the launch will read (bench.data.identity_digest;
null when it cannot be found: `check_data` stops `plan` and `run` then); a spec does not set it.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.core.errors import ConfigError
from bench.core.hashing import canonical_json
from bench.core.options import Option, is_number_text, quoted_number, short_repr
from bench.core.yamlio import load_file
from bench.data import identity_digest
from bench.study.baselines import baseline_runs
from bench.study.config import (SCHEMA, SEED_MAX, check_fits, check_partial, is_known_key, resolve,
                                resolve_launch, set_dotted)
from bench.study.run_ids import run_id
from bench.study.written import (Where, base_error, error_at, locate, merge, put_where, run_error, sub_where,
                                 written_at)

SPEC_KEYS = ("name", "description", "base", "grid", "zip", "seeds", "launch", "profiles", "paper", "extends",
             "baselines")
PROFILE_KEYS = ("description", "base", "grid", "zip", "seeds", "launch", "extends")
MAX_RUNS = 10_000  # runs in one study: more is a typo (or a study to split), and plan would crawl
COMMAND_LINE = "command line"  # the source named for a bad --flag


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
    written: dict = field(default_factory=dict, repr=False)  # launch key -> (file, key as written): for errors


# ----------------------------------------------------------------------------- reading
def _load_yaml(path: Path, file: str) -> dict:
    data = load_file(path)
    if not isinstance(data, dict):
        raise ConfigError("<top>", f"a spec is a mapping with keys {', '.join(SPEC_KEYS)}", file)
    return data


def _axis_lists(mapping: Any, where: Where, at: tuple) -> dict[str, list]:
    if not isinstance(mapping, dict):
        raise error_at(where, at, f"{short_repr(mapping)} is not allowed; allowed: a mapping of dotted config keys "
                                "to lists of values")
    out = {}
    for key, values in mapping.items():
        if not isinstance(key, str) or not is_known_key(key) or key == "seed":
            hint = "use `seeds` for seeds" if key == "seed" else "a dotted config key such as masking.ratio"
            raise error_at(where, at + (key,), f"unknown key; allowed: {hint}")
        if not isinstance(values, list) or not values:
            raise error_at(where, at + (key,), f"{short_repr(values)} is not allowed; allowed: a non-empty list of values")
        option = _option(key)
        if option is not None:  # a leaf of the schema: each value checked once, here
            for i, value in enumerate(values):
                try:
                    option.check(key, value)
                except ConfigError as err:
                    raise error_at(where, at + (key, i), err.detail) from None
        out[key] = values
    return out


def _option(dotted: str) -> Option | None:
    """The schema's Option at a dotted key (None below a dict-valued option, e.g. masking.params.x)."""
    node: Any = SCHEMA
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node[part]
    return node if isinstance(node, Option) else None


def _seeds(value: Any, where: Where, at: tuple = ("seeds",)) -> list[int]:
    allowed = (f"a count >= 1 or a list of integers >= 0 (at most {MAX_RUNS} seeds, each at most {SEED_MAX})")
    if value is None:
        return []
    if type(value) is int:
        if 1 <= value <= MAX_RUNS:
            return list(range(value))
        raise error_at(where, at, f"{short_repr(value)} is {'out of range' if value > 0 else 'not allowed'}; "
                                f"allowed: {allowed}")
    if isinstance(value, list) and value:
        if len(value) > MAX_RUNS:
            raise error_at(where, at, f"a list of {len(value)} seeds is too long; allowed: {allowed}")
        for i, seed in enumerate(value):
            if type(seed) is not int or not 0 <= seed <= SEED_MAX:
                if is_number_text(seed):
                    raise error_at(where, at + (i,), quoted_number("", seed, f"an integer 0..{SEED_MAX}").detail)
                raise error_at(where, at + (i,), f"{short_repr(seed)} is not allowed; allowed: an integer 0..{SEED_MAX}")
        return list(value)
    if is_number_text(value):
        raise error_at(where, at, quoted_number("", value, allowed).detail)
    raise error_at(where, at, f"{short_repr(value)} is not allowed; allowed: {allowed}")


def load_study(path: str | Path, launch_overrides: dict | None = None, profile: str | None = None) -> Study:
    """Read, validate and expand a spec (in one of its profiles). Raises ConfigError naming the file."""
    path = Path(path)
    try:
        spec, where = _load_extended(path, str(path))
        spec, where = apply_profile(spec, profile, where)
        return _expand(spec, where, path, launch_overrides or {})
    except ConfigError as err:
        raise err if err.source else err.at(str(path)) from None


def _load_extended(path: Path, file: str, seen: tuple = ()) -> tuple[dict, Where]:
    """The spec at `path`, merged over the file it `extends` (recursively), and where each part was written."""
    spec = _load_yaml(path, file)
    where = written_at(spec, file)
    parent = spec.pop("extends", None)
    if parent is None:
        return spec, where
    if not isinstance(parent, str) or not parent:
        raise ConfigError("extends", f"{short_repr(parent)} is not allowed; allowed: a path to a spec, relative "
                                     "to this one", file)
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ConfigError("extends", f"{parent} extends itself", file)
    base, base_where = _load_extended(parent_path, str(parent_path), seen + (path.resolve(),))
    return merge(base, spec, base_where, put_where(where, "extends", {}))


def apply_profile(spec: dict, profile: str | None, where: Where | None = None) -> tuple[dict, Where]:
    """The spec as its profile `profile` describes it (None: the spec itself, profiles aside), and
    where each part of it was written."""
    where = where if where is not None else written_at(spec, "")
    profiles = spec.get("profiles") or {}
    allowed = "a mapping of profile names to mappings with keys " + ", ".join(PROFILE_KEYS)
    if not isinstance(profiles, dict):
        raise error_at(where, ("profiles",), f"{short_repr(profiles)} is not allowed; allowed: {allowed}")
    for name, overlay in profiles.items():
        if not isinstance(overlay, dict):
            raise error_at(where, ("profiles", name), f"{short_repr(overlay)} is not allowed; allowed: a mapping with "
                                                    f"keys {', '.join(PROFILE_KEYS)}")
    spec = {k: v for k, v in spec.items() if k != "profiles"}
    profiles_where, where = sub_where(where, "profiles"), put_where(where, "profiles", {})
    if profile is None:
        return spec, where
    if profile not in profiles:
        raise ConfigError("profiles", f"{profile!r} is not defined; allowed: {', '.join(map(str, profiles)) or 'none'}")
    overlay, overlay_where = _profile_overlay(profiles, profiles_where, profile, ())
    for key, value in overlay.items():
        if key == "base" and value is None:  # `base:` left empty: nothing to merge
            continue
        if key == "base":
            base = spec.get("base") or {}
            if not isinstance(base, dict):
                raise error_at(where, ("base",), f"{short_repr(base)} is not allowed; allowed: a mapping with "
                                               f"{', '.join(SCHEMA)}")
            spec["base"], sub = merge(base, value, sub_where(where, "base"), sub_where(overlay_where, "base"))
        else:
            spec[key], sub = copy.deepcopy(value), sub_where(overlay_where, key)
        where = put_where(where, key, sub)
    spec["name"] = f"{spec.get('name')}-{profile}"
    return spec, where


_PROFILE_TYPES = {"description": (str, "a string"), "base": (dict, "a mapping with " + ", ".join(SCHEMA)),
                  "grid": (dict, "a mapping of dotted config keys to lists of values"),
                  "zip": (list, "a list of groups, each a mapping of keys to equal-length lists"),
                  "launch": (dict, "a mapping of launch settings"), "extends": (str, "the name of another profile")}


def _profile_overlay(profiles: dict, where: Where, profile: str, seen: tuple) -> tuple[dict, Where]:
    """Profile `profile`'s overlay, with the profiles it extends merged under it, and where each part was written."""
    overlay, overlay_where = profiles[profile], sub_where(where, profile)
    unknown = [k for k in overlay if k not in PROFILE_KEYS]
    if unknown:
        raise error_at(overlay_where, (unknown[0],), f"unknown key; allowed: {', '.join(PROFILE_KEYS)}")
    for key, value in overlay.items():
        kind, allowed = _PROFILE_TYPES.get(key, (object, ""))
        if value is not None and not isinstance(value, kind):
            raise error_at(overlay_where, (key,), f"{short_repr(value)} is not allowed; allowed: {allowed}")
    parent = overlay.get("extends")
    if parent is None:
        return overlay, overlay_where
    if parent not in profiles or parent in seen + (profile,):
        allowed = ", ".join(str(p) for p in profiles if p not in seen + (profile,)) or "none"
        raise error_at(overlay_where, ("extends",), f"{parent!r} is not allowed; allowed: {allowed}")
    merged, merged_where = _profile_overlay(profiles, where, parent, seen + (profile,))
    merged = dict(merged)
    for key, value in overlay.items():
        if key == "extends":
            continue
        if key == "base" and isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key], sub = merge(merged[key], value, sub_where(merged_where, key), sub_where(overlay_where, key))
        else:
            merged[key], sub = value, sub_where(overlay_where, key)
        merged_where = put_where(merged_where, key, sub)
    merged.pop("extends", None)
    return merged, merged_where


# ----------------------------------------------------------------------------- expanding
def _expand(spec: dict, where: Where, path: Path, launch_overrides: dict) -> Study:
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise error_at(where, (unknown[0],), f"unknown key; allowed: {', '.join(SPEC_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise error_at(where, ("name",), f"{short_repr(name)} is not allowed; allowed: letters, digits, '_', '-', '.'")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise error_at(where, ("description",), f"{short_repr(description)} is not allowed; allowed: a string "
                                              "(quote it if YAML reads it as something else)")
    base = spec.get("base") or {}
    if not isinstance(base, dict):
        raise error_at(where, ("base",), f"{short_repr(base)} is not allowed; allowed: a mapping with "
                                       f"{', '.join(SCHEMA)}")
    grid = _axis_lists(spec.get("grid") or {}, where, ("grid",))
    zips = spec.get("zip") or []
    if not isinstance(zips, list):
        raise error_at(where, ("zip",), "must be a list of groups, each a mapping of keys to equal-length lists")
    zip_groups = []
    for i, group in enumerate(zips):
        group = _axis_lists(group, where, ("zip", i))
        lengths = {len(v) for v in group.values()}
        if len(lengths) > 1:
            raise error_at(where, ("zip", i), f"lists of unequal lengths {sorted(lengths)}; keys in a group vary together")
        clash = set(group) & (set(grid) | {k for g in zip_groups for k in g})
        if clash:
            raise error_at(where, ("zip", i, sorted(clash)[0]), "is already varied elsewhere in the spec")
        zip_groups.append(group)
    seeds = _seeds(spec.get("seeds"), where)
    _check_size(grid, zip_groups, seeds, where)
    paper = _check_paper(spec.get("paper"), where)
    launch, written = _launch(spec.get("launch"), launch_overrides, where)
    varied = tuple(grid) + tuple(k for g in zip_groups for k in g)
    try:
        check_partial(base, skip=varied)  # the base's own keys, each once (the grid's were checked above)
    except ConfigError as err:
        raise base_error(err, base, where) from None

    # every axis: a list of ({key: value}, {key: where it was written}) choices; the product is the study
    axes = [[({key: value}, {key: ("grid", key, i)}) for i, value in enumerate(values)]
            for key, values in grid.items()]
    axes += [[(dict(zip(group, combo)), {key: ("zip", j, key, i) for key in group})
              for i, combo in enumerate(zip(*group.values()))] for j, group in enumerate(zip_groups)]
    axes.append([({"seed": s}, {"seed": ("seeds", i)}) for i, s in enumerate(seeds)] or [({}, {})])

    runs, seen, identities = [], set(), {}
    for combo in itertools.product(*axes):
        partial = copy.deepcopy(base)
        varying = {}
        try:
            for choice, _ in combo:
                for key, value in choice.items():
                    set_dotted(partial, key, value)
                    varying[key] = value
            if isinstance(partial.get("data"), dict) and partial["data"].get("identity") is not None:
                raise ConfigError("data.identity", "is filled in from the data the launch reads; allowed: leave "
                                                   "it out (pick the data with --data-root or launch.data_root)")
            config = resolve(partial)
            check_fits(config)
        except ConfigError as err:
            raise run_error(err, combo, varying, base, where) from None
        config["data"]["identity"] = identity_digest(config["data"], launch.get("data_root"), identities)
        rid = run_id(config)
        if rid in seen:  # two grid points that resolve to the same config run once
            continue
        seen.add(rid)
        runs.append(Run(config, rid, varying))
    axes_varied = [k for k in varied if len({canonical_json({"v": r.varying.get(k)}) for r in runs}) > 1]
    with_baselines = spec.get("baselines", False)
    if not isinstance(with_baselines, bool):
        raise error_at(where, ("baselines",), f"{with_baselines!r} is not allowed; allowed: true or false")
    if with_baselines:
        runs += [r for r in baseline_runs(runs, Run) if r.run_id not in seen]
    return Study(name=name, description=description or "", path=str(path),
                 runs=runs, axes=axes_varied, launch=launch, paper=paper, written=written,
                 zip_groups=[[k for k in g if k in axes_varied] for g in zip_groups
                             if len([k for k in g if k in axes_varied]) > 1])


def _check_size(grid: dict, zip_groups: list, seeds: list, where: Where) -> None:
    """At most MAX_RUNS runs, counted before anything is expanded."""
    factors = [(("grid",), len(v), f"grid {key} {len(v)}") for key, v in grid.items()]
    factors += [(("zip", j), len(next(iter(g.values()))), f"zip[{j}] {len(next(iter(g.values())))}")
                for j, g in enumerate(zip_groups)]
    factors.append((("seeds",), max(len(seeds), 1), f"seeds {max(len(seeds), 1)}"))
    total = 1
    for _, n, _ in factors:
        total *= n
    if total > MAX_RUNS:
        at = max(factors, key=lambda f: f[1])[0]
        raise error_at(where, at, f"the study would have {total} runs ({' x '.join(f[2] for f in factors)}); "
                                f"allowed: at most {MAX_RUNS} runs in one study (split it into several specs or profiles)")


def _check_paper(paper: Any, where: Where) -> dict | None:
    """{source, subtable} naming a paper and subtable bench.papers knows."""
    if paper is None:
        return None
    if not (isinstance(paper, dict) and set(paper) == {"source", "subtable"}
            and all(isinstance(v, str) for v in paper.values())):
        raise error_at(where, ("paper",), f"{short_repr(paper)} is not allowed; allowed: a mapping "
                                        "{source: mae, subtable: table1f}")
    from bench.papers import subtable

    try:
        subtable(paper["source"], paper["subtable"])
    except ConfigError as err:
        if err.key in ("paper.source", "paper.subtable"):
            raise error_at(where, tuple(err.key.split(".")), err.detail) from None
        raise
    return paper


def _launch(launch: Any, overrides: dict, where: Where) -> tuple[dict, dict]:
    """The resolved launch section (the spec's, the command line's flags over it), and where its
    data_root was written."""
    if launch is not None and not isinstance(launch, dict):
        raise error_at(where, ("launch",), f"{short_repr(launch)} is not allowed; allowed: a mapping of launch "
                                         "settings (executor, parallel, ...)")
    try:
        resolved = resolve_launch({**(launch or {}), **overrides})
    except ConfigError as err:
        key = err.key.split(".", 1)[1] if err.key.startswith("launch.") else err.key
        if key in overrides:
            raise ConfigError("--" + key.replace("_", "-"), err.detail, COMMAND_LINE) from None
        raise error_at(where, ("launch",) + (locate(launch, key) or (key,)), err.detail) from None
    if "data_root" in overrides:
        written = {"data_root": (COMMAND_LINE, "--data-root")}
    else:
        error = error_at(where, ("launch", "data_root"), "")
        written = {"data_root": (error.source, error.key)}
    return resolved, written


def check_data(study: Study) -> None:
    """The cheap look at the data the study's runs read (bench.data.check_data: the data root
    exists, the files are there and read as their format says, one label space, no limit larger
    than its split), once per dataset and limits. `mimbench plan` and `run` call it after
    load_study; it raises a one-line ConfigError."""
    from bench.data import check_data as check

    data_root = study.launch.get("data_root")
    sections = {(r.config["data"]["name"], r.config["data"].get("train_limit"), r.config["data"].get("test_limit"))
                for r in study.runs}
    for name, train_limit, test_limit in sorted(sections, key=lambda s: tuple(map(str, s))):
        try:
            check(name, data_root, {"train": train_limit, "test": test_limit})
        except ConfigError as err:
            if err.key == "launch.data_root" and "data_root" in study.written:
                source, key = study.written["data_root"]
                raise ConfigError(key, err.detail, source) from None
            raise err if err.source else err.at(study.path) from None
