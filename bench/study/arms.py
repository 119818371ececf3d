"""A study of studies: one YAML file whose `arms` name other specs, run and reported together.

    name: masking_across_methods
    description: masking strategies under every method
    arms:                                   # specs, relative to this file; each an ordinary study
      - masking_across_methods/mae.yaml
      - videomae/table1b_masking.yaml

Each arm stays an ordinary study: `mimbench plan|run FILE --profile small` plans or runs the arms in
turn, exactly as if each had been named on the command line (its own results folder
`results/<arm name>-<profile>`, its own report, its own baselines), so an arm can also be run,
relaunched or reported alone, and an arm that is another comparison (VideoMAE's Table 1b) is
shared with it, run once. `mimbench report FILE --profile small` writes the comparison across the
arms (bench.analysis.across) from their committed reports (reports/<arm study>/runs.csv), so arms
run on different days still meet in one table. Every arm must define the profile asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import ConfigError
from bench.core.options import short_repr
from bench.core.yamlio import load_file

COLLECTION_KEYS = ("name", "description", "arms")


@dataclass
class Collection:
    name: str
    description: str
    path: str
    arms: list  # the arms' Studies (bench.study.spec.Study), in the file's order

    def study_name(self, profile: str | None) -> str:
        """Where the comparison's report goes: reports/<name>[-<profile>]."""
        return f"{self.name}-{profile}" if profile else self.name


def is_collection(path: str | Path) -> bool:
    """Whether `path` is a YAML file whose top level has `arms` (a collection, not a spec)."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    data = load_file(path)
    return isinstance(data, dict) and "arms" in data


def load_collection(path: str | Path, launch_overrides: dict | None = None,
                    profile: str | None = None) -> Collection:
    """The collection at `path` with every arm loaded (and so validated) at `profile`; a bad file,
    key or arm stops with one line naming the file and the key before anything runs."""
    from bench.study.spec import load_study

    path, file = Path(path), str(path)
    data = load_file(path)
    if not isinstance(data, dict):
        raise ConfigError("<top>", f"a collection is a mapping with keys {', '.join(COLLECTION_KEYS)}", file)
    for key in data:
        if key not in COLLECTION_KEYS:
            raise ConfigError(str(key), f"unknown key; allowed: {', '.join(COLLECTION_KEYS)}", file)
    name = data.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError("name", f"{short_repr(name)} is not allowed; allowed: a name without '/'", file)
    arms = data.get("arms")
    if not isinstance(arms, list) or not arms:
        raise ConfigError("arms", f"{short_repr(arms)} is not allowed; allowed: a non-empty list of spec files, "
                                  "relative to this one", file)
    studies, seen = [], set()
    for i, arm in enumerate(arms):
        arm_path = path.parent / arm if isinstance(arm, str) else None
        if arm_path is None or not arm_path.is_file():
            raise ConfigError(f"arms[{i}]", f"{short_repr(arm)} is not a file; allowed: a spec file, relative to "
                                            f"this one ({path.parent})", file)
        if is_collection(arm_path):
            raise ConfigError(f"arms[{i}]", f"{arm} is itself a collection; allowed: a spec (with grid, zip, "
                                            "seeds ...)", file)
        if arm_path.resolve() in seen:
            raise ConfigError(f"arms[{i}]", f"{arm} is named twice; allowed: each spec once", file)
        seen.add(arm_path.resolve())
        studies.append(load_study(arm_path, launch_overrides, profile))
    return Collection(name, str(data.get("description") or ""), file, studies)
