"""Where each part of a spec was written — which file, under which key — so that an error names
the key as the user wrote it (`base.masking.ratio`, `profiles.small.base…`, `grid.masking.ratio[2]`).

A spec is merged from files (`extends`) and profiles. Beside each merged tree goes a `Where`: a
map from each of its paths (a tuple of keys and list indices) to (file, path as written there).
"""
from __future__ import annotations

import copy
from typing import Any

from bench.core.errors import ConfigError
from bench.core.options import short_repr

Where = dict  # tuple path -> (file, tuple path as written)


def written_at(value: Any, file: str, at: tuple = ()) -> Where:
    """Every part of `value`, written in `file` at path `at`."""
    out = {(): (file, at)}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        for path, written in written_at(sub, file, at + (key,)).items():
            out[(key,) + path] = written
    return out


def sub_where(where: Where, key: Any) -> Where:
    return {path[1:]: w for path, w in where.items() if path[:1] == (key,)}


def put_where(where: Where, key: Any, sub: Where) -> Where:
    out = {path: w for path, w in where.items() if path[:1] != (key,)}
    out.update({(key,) + path: w for path, w in sub.items()})
    return out


def merge(base: dict, overlay: dict, base_where: Where | None = None,
           overlay_where: Where | None = None) -> tuple[dict, Where]:
    """`overlay` merged into a copy of `base`, mapping by mapping (lists replace), and where each
    part of the result was written."""
    out, where = dict(base), dict(base_where or {})
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key], sub = merge(out[key], value, sub_where(where, key), sub_where(overlay_where or {}, key))
        else:
            out[key], sub = copy.deepcopy(value), sub_where(overlay_where or {}, key)
        where = put_where(where, key, sub)
    return out, where


def show_path(parts: tuple) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if type(part) is int else (f".{part}" if out else str(part))
    return out or "<top>"


def error_at(where: Where, path: tuple, message: str) -> ConfigError:
    """A ConfigError naming the file and the key where the part at `path` was written."""
    for i in range(len(path), -1, -1):
        if path[:i] in where:
            file, written = where[path[:i]]
            return ConfigError(show_path(written + path[i:]), message, file)
    return ConfigError(show_path(path), message)


def locate(tree: Any, dotted: str) -> tuple | None:
    """The path of the dotted config key `dotted` in the nested mapping `tree`; None if not set."""
    if not isinstance(tree, dict):
        return None
    for key in tree:
        text = str(key)
        if dotted == text:
            return (key,)
        if dotted.startswith(text + "."):
            rest = locate(tree[key], dotted[len(text) + 1:])
            if rest is not None:
                return (key,) + rest
    return None


def base_error(err: ConfigError, base: dict, where: Where, context: str = "") -> ConfigError:
    """An error about the config key err.key, named where the base sets it (or as the default)."""
    located = locate(base, err.key) if err.key != "<top>" else ()
    if located is None:
        return ConfigError(err.key, f"{err.detail} (the default: the spec does not set it){context}")
    return error_at(where, ("base",) + located, err.detail + context)


def run_error(err: ConfigError, combo: tuple, varying: dict, base: dict, where: Where) -> ConfigError:
    """An error resolving one run: named at the grid or zip value it is about, else at the base's
    key, with the run's grid values when they may be the cause."""
    for choice, written in combo:
        for key, at in written.items():
            if err.key == key or err.key.startswith(key + "."):
                rest = err.key[len(key) + 1:]
                return error_at(where, at + ((rest,) if rest else ()), err.detail)
    shown = [f"{key} = {short_repr(value, 40)}" for key, value in varying.items() if key != "seed"]
    return base_error(err, base, where, f" (in the run with {', '.join(shown)})" if shown else "")
