"""The one registry shape (timm's): `register` files an entry under a name, `get` finds it,
`names` lists them. Each kind of thing — masking strategies, targets, methods, model presets,
evals, datasets, augmentations — has one `Registry` and module-level `register_<thing>`,
`create_<thing>` and `list_<thing>s` functions built on it; the config validator asks the
registry which names exist, so adding an entry needs no edit anywhere else.

Entries name their implementation as "module:attribute" (`load`), imported on first use: the
registries themselves import no torch, so `mimbench plan`, `status` and `--help` stay quick.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator

from bench.core.errors import ConfigError


class Registry:
    """Names → entries of one kind. `key` is the config key that names an entry (for errors)."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: dict[str, Any] = {}

    def add(self, name: str, entry: Any) -> Any:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str, wrap: Callable[[Any], Any] | None = None) -> Callable[[Any], Any]:
        """A decorator filing what it decorates (or `wrap(it)`) under `name`; returns it unchanged."""
        def decorate(obj: Any) -> Any:
            self.add(name, wrap(obj) if wrap else obj)
            return obj
        return decorate

    def get(self, name: str, key: str | None = None) -> Any:
        """The entry `name`; a one-line ConfigError naming the key and the allowed names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ConfigError(key or self.key, f"{name!r} is not allowed; allowed: {', '.join(self._entries)}") \
                from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def load(ref: str) -> Any:
    """The object a "package.module:attribute" reference names (imported on first use)."""
    module, _, attribute = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attribute.split(".") if attribute else ():
        obj = getattr(obj, part)
    return obj
