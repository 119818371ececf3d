"""Canonical JSON and the 12-hex-digit digest that names runs and cache entries."""
from __future__ import annotations

import hashlib
import json


def canonical_json(value) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text, whatever the key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(value) -> str:
    """12 hex digits of the SHA-256 of `value`'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:12]
