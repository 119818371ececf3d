"""One leaf of a schema: its default, type, range and allowed values, and the check that
normalises a value or raises a one-line ConfigError."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bench.core.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One leaf of the schema: its default, type, and allowed values."""

    default: Any
    kind: type
    choices: tuple | Callable[[], tuple] | None = None
    low: float | None = None
    high: float | None = None
    open_interval: bool = False  # True: low < x < high; False: low <= x <= high
    nullable: bool = False
    help: str = ""

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices

    def describe(self) -> str:
        if self.allowed() is not None:
            return "one of " + ", ".join(map(str, self.allowed()))
        parts = [self.kind.__name__]
        if self.low is not None and self.high is not None:
            op = "<" if self.open_interval else "<="
            parts.append(f"{self.low} {op} x {op} {self.high}")
        elif self.low is not None:
            parts.append(f">= {self.low}")
        if self.nullable:
            parts.append("or null")
        return " ".join(parts)

    def check(self, key: str, value: Any) -> Any:
        """Return the value normalised to this option's type, or raise ConfigError."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(key, f"must not be null; allowed: {self.describe()}")
        if type(value) is not self.kind:  # the usual case (already the right type) skips coercion
            value = _coerce(key, value, self.kind, self.describe)
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise ConfigError(key, f"{value!r} is not allowed; allowed: {self.describe()}")
        if self.low is not None and (value <= self.low if self.open_interval else value < self.low):
            raise ConfigError(key, f"{value!r} is out of range; allowed: {self.describe()}")
        if self.high is not None and (value >= self.high if self.open_interval else value > self.high):
            raise ConfigError(key, f"{value!r} is out of range; allowed: {self.describe()}")
        return value


def _coerce(key: str, value: Any, kind: type, describe: Callable[[], str]) -> Any:
    """`value` as `kind`; the error (and its description of what is allowed) is built only when it is bad."""
    def bad() -> ConfigError:
        return ConfigError(key, f"{value!r} has the wrong type ({type(value).__name__}); allowed: {describe()}")
    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        if not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return list(value)
    if not isinstance(value, kind):
        raise bad()
    return value
