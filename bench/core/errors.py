"""The one error for bad input: a single line naming the file, the key and what is allowed."""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad input. Its message is one line: where (file), which key, and what is allowed."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.source, self.detail = key, source, message
        text = f"{source + ': ' if source else ''}{key}: {message}"
        super().__init__(" ".join(text.splitlines()) if "\n" in text or "\r" in text else text)  # one line

    def at(self, source: str) -> "ConfigError":
        return ConfigError(self.key, self.detail, source)


class NonFiniteError(FloatingPointError):
    """A loss or a number that is NaN or infinite: never a result. The run fails, and the message
    names the phase, the epoch (counted from 1, as in metrics.jsonl) and the step."""


def require_finite(losses, phase: str, epoch: int) -> None:
    """Raise NonFiniteError at the first non-finite entry of `losses` (a 1-D tensor of per-step
    values of one epoch): one host sync per epoch, not per step."""
    bad = (~losses.isfinite()).nonzero()
    if len(bad):
        step = int(bad[0])
        raise NonFiniteError(f"{phase} loss is {float(losses[step])} at epoch {epoch}, step {step}")
