"""Canonical JSON: the exact bytes that get signed."""

import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """Serialize ``value`` deterministically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")
