"""The process and platform facts of the operational fields, read with psutil."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import psutil

__all__ = ["RUNTIME_PACKAGES", "SystemSample", "SystemSampler", "runtime_versions"]

# distribution name -> key on the wire
RUNTIME_PACKAGES = {
    "llama_cpp_python": "llama_cpp",
    "onnxruntime": "onnxruntime",
    "ai-edge-litert": "litert",
    "tflite-runtime": "tflite_runtime",
    "coremltools": "coremltools",
    "sqlite-vec": "sqlite_vec",
    "opendp": "opendp",
}


def runtime_versions() -> dict[str, str]:
    """Versions of the runtime libraries installed here (absent ones left out)."""
    found: dict[str, str] = {}
    for dist, key in RUNTIME_PACKAGES.items():
        try:
            found[key] = metadata.version(dist)[:64]
        except metadata.PackageNotFoundError:
            continue
    return found


@dataclass(frozen=True, slots=True)
class SystemSample:
    rss_bytes: int
    cpu_percent: float  # since the previous sample, 100 = one core
    load_average_1m: float | None
    temperature_celsius: float | None


def _hottest() -> float | None:
    reader: Callable[[], dict[str, list[object]]] | None = getattr(
        psutil, "sensors_temperatures", None
    )
    if reader is None:  # macOS, Windows: psutil reports none
        return None
    try:
        sensors = reader()
    except (OSError, RuntimeError):
        return None
    readings = [float(getattr(s, "current", 0.0)) for group in sensors.values() for s in group]
    readings = [r for r in readings if -100.0 <= r <= 250.0]
    return max(readings) if readings else None


class SystemSampler:
    """RSS, CPU over the interval since the previous sample, load, temperature."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._process = psutil.Process(os.getpid())
        self._clock = clock
        self.started = clock()
        self._last_cpu = self._cpu_seconds()
        self._last_at = self.started

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def uptime_seconds(self) -> float:
        return max(0.0, self._clock() - self.started)

    def cpu_seconds(self) -> float:
        return self._cpu_seconds()

    def rss_bytes(self) -> int:
        return int(self._process.memory_info().rss)

    def temperature_celsius(self) -> float | None:
        return _hottest()

    def sample(self) -> SystemSample:
        now, cpu = self._clock(), self._cpu_seconds()
        elapsed = now - self._last_at
        percent = 100.0 * (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_at, self._last_cpu = now, cpu
        try:
            load: float | None = float(os.getloadavg()[0])
        except (OSError, AttributeError):
            load = None
        return SystemSample(
            rss_bytes=self.rss_bytes(),
            cpu_percent=max(0.0, percent),
            load_average_1m=load,
            temperature_celsius=_hottest(),
        )
