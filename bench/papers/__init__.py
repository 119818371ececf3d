"""The papers' own numbers, shipped as package data (bench/papers/<paper>.yaml), and their loader.

It sits below both bench.study (a spec's `paper:` is checked when the spec loads) and
bench.analysis (the report's comparison), and imports neither.

    sub = subtable("mae", "table1f")
    sub.axes                      ('masking.strategy', 'masking.ratio')  config keys of the setting
    sub.point_at(("block", 0.5))  Point(label='block 50%', values={'ft': 83.9, 'lin': 72.3}, ...)
    sub.claims                    what the paper says in words, some with a machine check

A point is the paper's numbers at one setting, keyed by the setting's values in our config; a
claim is a sentence of the paper, with a `check` when it can be tested against our numbers (see
CHECK_KINDS). Figures are plots: their subtables hold only what the text states.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from bench.core.errors import ConfigError

PAPER_METRICS = ("ft", "lin")  # fine-tune top-1, linear-probe top-1
OTHER_METRICS = ("flops", "pretrain_wall_h", "ade20k_miou", "ft_k400")  # a table's other numbers (mIoU, K400: compared nowhere)
SHORT_NAMES = {"mae": "MAE", "beit": "BEiT", "simmim": "SimMIM", "spark": "SparK", "videomae": "VideoMAE"}
CHECK_KINDS = {  # kind -> the keys its check needs besides kind and metric
    "monotone_increasing": (),     # means rise with the (numeric) axis; `upto`: only up to that value
    "argmax": ("at",),             # the best setting is `at`
    "above": ("bound",),           # every setting's mean is above `bound`
}


@dataclass(frozen=True)
class Point:
    """The paper's numbers at one setting."""
    setting: tuple              # the values of the subtable's axes, in their order
    label: str                  # the paper's name for the setting
    values: dict[str, float]    # metric -> number: 'ft', 'lin', and others a table gives ('flops', ...)
    default: bool = False       # the paper's baseline setting (gray in Table 1)

    @property
    def ft(self) -> float | None:
        return self.values.get("ft")

    @property
    def lin(self) -> float | None:
        return self.values.get("lin")


@dataclass(frozen=True)
class Claim:
    """A sentence of the paper; `check` (e.g. {'kind': 'argmax', 'metric': 'lin', 'at': (0.75,)}) or None."""
    text: str
    check: dict | None = None


@dataclass(frozen=True)
class Subtable:
    """One ablation of a paper: the config keys it varies, its numbers and its claims."""
    paper: str
    id: str
    title: str
    source: str                 # 'Table 1f', 'Figure 5 (the text of section 4.1)'
    setup: dict[str, Any]       # model, data, pretrain_epochs, metrics: what the numbers measure
    axes: tuple[str, ...]       # our config keys, e.g. ('masking.strategy', 'masking.ratio')
    points: tuple[Point, ...] = ()
    claims: tuple[Claim, ...] = ()
    notes: tuple[str, ...] = ()
    plotted_values_given: bool = True  # False for a figure: only the numbers its text states
    scaled_by: dict | None = None  # {'key': 'model.embed_dim', 'paper': 1024.0}: match the axis as a fraction

    def point_at(self, setting) -> Point | None:
        """The paper's point at a setting (values of `axes`, or one value for a single axis)."""
        setting = _as_setting(setting, len(self.axes))
        return next((p for p in self.points if same_setting(p.setting, setting)), None)

    @property
    def metrics(self) -> list[str]:
        """The metrics the points give a number for, ft and lin first."""
        given = {m for p in self.points for m in p.values}
        return [m for m in PAPER_METRICS + OTHER_METRICS if m in given]

    @property
    def label(self) -> str:
        """'MAE Table 1f', 'SparK the paper's ablation of ...': the paper's short name and the source."""
        return f"{SHORT_NAMES.get(self.paper, self.paper.upper())} {self.source.split(' (')[0]}"

    @property
    def setup_text(self) -> str:
        """'ViT-L/16, ImageNet-1K, 800 epochs pre-training' (and hardware where given)."""
        parts = [self.setup.get("model"), self.setup.get("data")]
        if self.setup.get("pretrain_epochs") is not None:
            parts.append(f"{self.setup['pretrain_epochs']} epochs pre-training")
        parts.append(self.setup.get("hardware"))
        return ", ".join(str(p) for p in parts if p)


@dataclass(frozen=True)
class Paper:
    name: str
    title: str
    subtables: dict[str, Subtable] = field(default_factory=dict)


# ----------------------------------------------------------------------------- settings
def _is_number(value: Any) -> bool:
    """A real number, NumPy's included (they register as numbers.Real; NumPy's bool does not); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def same_value(a: Any, b: Any) -> bool:
    """Config values equal: numbers by value (8 == 8.0), anything else exactly (True is not 1)."""
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if _is_number(a) or _is_number(b):
        return False
    return bool(a == b)


def same_setting(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))


def _as_setting(value: Any, n_axes: int) -> tuple:
    """A setting as a tuple of axis values: a single axis may give its value alone."""
    if n_axes == 1 and not isinstance(value, (list, tuple)):
        return (value,)
    return tuple(value)


# ----------------------------------------------------------------------------- loading
def available_papers() -> list[str]:
    folder = resources.files("bench") / "papers"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def load_paper(name: str) -> Paper:
    """Read and check bench/papers/<name>.yaml. Raises ConfigError naming the file and key."""
    if name not in available_papers():
        raise ConfigError("paper.source", f"{name!r} is not known; allowed: {', '.join(available_papers())}")
    source = f"bench/papers/{name}.yaml"
    data = yaml.safe_load((resources.files("bench") / "papers" / f"{name}.yaml").read_text())
    try:
        subtables = {sid: _subtable(name, sid, entry, data.get("setup") or {})
                     for sid, entry in data["subtables"].items()}
    except ConfigError as err:
        raise err.at(source) from None
    return Paper(name=name, title=data.get("title", name), subtables=subtables)


def subtable(paper: str, subtable_id: str) -> Subtable:
    """A paper's subtable by id ('table1f', 'fig5'). Raises ConfigError listing the known ids."""
    subtables = load_paper(paper).subtables
    if subtable_id not in subtables:
        raise ConfigError("paper.subtable", f"{subtable_id!r} is not in {paper}; allowed: {', '.join(subtables)}")
    return subtables[subtable_id]


def parse_paper_ref(ref: str | dict) -> tuple[str, str]:
    """'mae:table1f' or {'source': 'mae', 'subtable': 'table1f'} -> ('mae', 'table1f')."""
    if isinstance(ref, dict) and set(ref) == {"source", "subtable"}:
        return str(ref["source"]), str(ref["subtable"])
    if isinstance(ref, str) and ref.count(":") == 1 and all(ref.split(":")):
        paper, sid = ref.split(":")
        return paper, sid
    raise ConfigError("paper", f"{ref!r} is not allowed; allowed: PAPER:SUBTABLE, e.g. mae:table1f")


def _subtable(paper: str, sid: str, entry: dict, paper_setup: dict) -> Subtable:
    where = f"subtables.{sid}"
    axes = tuple(entry.get("axes") or ())
    if not axes:
        raise ConfigError(f"{where}.axes", "is missing; allowed: a list of config keys")
    points = []
    for i, raw in enumerate(entry.get("points") or []):
        values = {k: float(v) for k, v in raw.items() if k in PAPER_METRICS + OTHER_METRICS}
        unknown = set(raw) - set(values) - {"at", "label", "default"}
        if unknown or "at" not in raw:
            raise ConfigError(f"{where}.points[{i}]", f"has {sorted(unknown) or 'no at'}; allowed: at, label, "
                              f"default, {', '.join(PAPER_METRICS + OTHER_METRICS)}")
        setting = _as_setting(raw["at"], len(axes))
        if len(setting) != len(axes):
            raise ConfigError(f"{where}.points[{i}].at", f"{raw['at']!r} does not give one value per axis {list(axes)}")
        label = str(raw.get("label") or ", ".join(str(v) for v in setting))
        points.append(Point(setting=setting, label=label, values=values, default=bool(raw.get("default"))))
    claims = [_claim(f"{where}.claims[{i}]", raw, axes) for i, raw in enumerate(entry.get("claims") or [])]
    scaled_by = entry.get("scaled_by")
    if scaled_by is not None:
        if len(axes) != 1 or set(scaled_by) != {"key", "paper"} or not _is_number(scaled_by["paper"]):
            raise ConfigError(f"{where}.scaled_by", "allowed: {key: a config key, paper: its value in the paper}, "
                              "for a subtable with one axis")
        scaled_by = {"key": str(scaled_by["key"]), "paper": float(scaled_by["paper"])}
    return Subtable(paper=paper, id=sid, title=str(entry.get("title", sid)), source=str(entry["source"]),
                    setup={**paper_setup, **(entry.get("setup") or {})}, axes=axes, points=tuple(points),
                    claims=tuple(claims), notes=tuple(entry.get("notes") or ()),
                    plotted_values_given=bool(entry.get("plotted_values_given", True)), scaled_by=scaled_by)


def _claim(where: str, raw: dict, axes: tuple) -> Claim:
    check = raw.get("check")
    if check is None:
        return Claim(text=str(raw["text"]))
    kind = check.get("kind")
    if kind not in CHECK_KINDS:
        raise ConfigError(f"{where}.check.kind", f"{kind!r} is not allowed; allowed: {', '.join(CHECK_KINDS)}")
    if check.get("metric") not in PAPER_METRICS:
        raise ConfigError(f"{where}.check.metric", f"{check.get('metric')!r} is not allowed; "
                          f"allowed: {', '.join(PAPER_METRICS)}")
    missing = [k for k in CHECK_KINDS[kind] if k not in check]
    if missing:
        raise ConfigError(f"{where}.check", f"a {kind} check needs {', '.join(missing)}")
    if kind == "monotone_increasing" and len(axes) != 1:
        raise ConfigError(f"{where}.check.kind", "monotone_increasing needs a subtable with one axis")
    check = dict(check)
    if "at" in check:
        check["at"] = _as_setting(check["at"], len(axes))
    return Claim(text=str(raw["text"]), check=check)
