"""This process's resident memory (the agent's ``/v1/status`` and its acceptance check)."""

from __future__ import annotations

import resource
import sys

import psutil


def process_memory() -> dict[str, float]:
    """Resident memory now and at its peak, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    rss_mb = psutil.Process().memory_info().rss / (1 << 20)
    return {"rss_mb": round(rss_mb, 1), "peak_rss_mb": round(max(peak_mb, rss_mb), 1)}
