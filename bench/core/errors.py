"""The one error for bad input: a single line naming the file, the key and what is allowed."""
from __future__ import annotations


class ConfigError(ValueError):
    """Bad input. Its message is one line: where (file), which key, and what is allowed."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.source, self.detail = key, source, message
        super().__init__(f"{source + ': ' if source else ''}{key}: {message}")

    def at(self, source: str) -> "ConfigError":
        return ConfigError(self.key, self.detail, source)
