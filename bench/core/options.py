"""One leaf of a schema: its default, type, range and allowed values, and the check that
normalises a value or raises a one-line ConfigError.

The rules, the same for every option: a value has the option's type — an int is accepted for a
float, nothing else is converted (a bool is not a number, a quoted number such as '0.5' is a
string); a float is finite (NaN and ±inf are rejected unless the option says `finite=False`);
an int is below 2**63; then the range and the allowed values.
"""
from __future__ import annotations

import math
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
    finite: bool = True  # a float must be finite (NaN, inf and -inf are rejected)

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
        if self.kind is float and self.finite and not math.isfinite(value):
            raise ConfigError(key, f"{short_repr(value)} is not a finite number; allowed: {self.describe()}")
        if self.kind is int and not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(key, f"{short_repr(value)} is out of range; allowed: {self.describe()}, below 2**63")
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise ConfigError(key, f"{short_repr(value)} is not allowed; allowed: {self.describe()}")
        if self.low is not None and (value <= self.low if self.open_interval else value < self.low):
            raise ConfigError(key, f"{short_repr(value)} is out of range; allowed: {self.describe()}")
        if self.high is not None and (value >= self.high if self.open_interval else value > self.high):
            raise ConfigError(key, f"{short_repr(value)} is out of range; allowed: {self.describe()}")
        return value


INT_LIMIT = 2 ** 63  # every int fits a signed 64-bit integer (what torch and NumPy hold)


def short_repr(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters (a message stays one readable line)."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python prints
        return f"<an integer of more than {limit} digits>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_number_text(value: Any) -> bool:
    """True for a string that spells a number ('0.5', '32', '1e-3', 'nan'): a quoted number."""
    if not isinstance(value, str):
        return False
    try:
        float(value.strip().replace("_", ""))
    except ValueError:
        return False
    return bool(value.strip())


def quoted_number(key: str, value: str, allowed: str) -> ConfigError:
    """The error for a number written in quotes (a string) where a number is expected."""
    return ConfigError(key, f"{value!r} is a quoted number (a string); allowed: {allowed} — "
                            "write numbers without quotes")


def _coerce(key: str, value: Any, kind: type, describe: Callable[[], str]) -> Any:
    """`value` as `kind`; the error (and its description of what is allowed) is built only when it is bad."""
    def bad() -> ConfigError:
        if kind in (int, float) and is_number_text(value):
            if not math.isfinite(float(value.strip().replace("_", ""))):
                return ConfigError(key, f"{value!r} is a string, not a finite number; allowed: {describe()}")
            return quoted_number(key, value, describe())
        return ConfigError(key, f"{short_repr(value)} has the wrong type ({type(value).__name__}); "
                                f"allowed: {describe()}")
    if kind is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            raise ConfigError(key, f"an integer of {len(str(abs(value)))} digits is out of range; "
                                   f"allowed: {describe()}") from None
    if kind is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return list(value)
    if not isinstance(value, kind):
        raise bad()
    return value
