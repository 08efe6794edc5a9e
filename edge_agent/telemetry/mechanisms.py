"""Privacy mechanisms: how a usage field's counts are noised before they leave the device.

:class:`NoiseMechanism` is the small interface the pure report builder uses; tests pass a
seeded stand-in. :class:`OpenDPDiscreteLaplace` is the one the agent runs: OpenDP's
integer Laplace measurement (``make_laplace`` over ``vector_domain(atom_domain(T=i64))``
with the L1 distance), which samples the discrete Laplace distribution exactly with a
cryptographic RNG: no floating-point attack applies to integer noise.

OpenDP 0.16 puts *every* measurement constructor behind its ``contrib`` feature flag
(``dp.m.make_laplace`` asserts it), so the agent enables ``contrib`` for the moment it
builds a measurement and disables it again; it never enables ``floating-point``,
``honest-but-curious`` or ``idealized-numerics`` and refuses to run if any is enabled.
The epsilon a release costs is what the measurement's own privacy map says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from edge_agent.errors import ConfigError
from protocol.telemetry import Mechanism

__all__ = ["NoiseMechanism", "OpenDPDiscreteLaplace", "clamp_counts"]

TELEMETRY_RUNBOOK = "docs/runbooks/agent-telemetry.md"
# never enabled by the agent; their presence means someone weakened the process's OpenDP
_FORBIDDEN_FEATURES = frozenset({"floating-point", "honest-but-curious", "idealized-numerics"})


def clamp_counts(values: Sequence[int], upper: int) -> list[int]:
    """Each count into ``[0, upper]``: bounds what one report can say about a period."""
    return [min(max(v, 0), upper) for v in values]


class NoiseMechanism(Protocol):
    """Adds noise of a given scale to integer counts; knows what that costs."""

    @property
    def name(self) -> Mechanism: ...

    def epsilon(self, scale: float, sensitivity: int) -> float:
        """Privacy loss of one release at ``scale`` when neighbours differ by
        ``sensitivity`` in L1."""
        ...

    def release(self, values: Sequence[int], scale: float) -> list[int]:
        """``values`` with independent noise of ``scale`` added to each."""
        ...


class OpenDPDiscreteLaplace:
    """Discrete Laplace noise from OpenDP (exact integer sampling, OS randomness)."""

    def __init__(self) -> None:
        self._dp: Any = None  # imported at the first release: it costs ~40 MiB of RSS
        self._features: set[str] = set()
        self._lock = threading.Lock()
        self._measurements: dict[float, Callable[[list[int]], list[int]]] = {}
        self._maps: dict[tuple[float, int], float] = {}

    def _load(self) -> Any:
        if self._dp is None:
            try:
                import opendp.prelude as dp
                from opendp.mod import GLOBAL_FEATURES
            except ImportError as e:  # a dependency of the agent: a broken install
                raise ConfigError(
                    "telemetry needs the 'opendp' package (pip install opendp); it is a"
                    " dependency of the agent, reinstall it"
                ) from e
            self._dp, self._features = dp, GLOBAL_FEATURES
        return self._dp

    @property
    def name(self) -> Mechanism:
        return "discrete_laplace"

    def _measurement(self, scale: float) -> Any:
        dp = self._load()
        weakened = _FORBIDDEN_FEATURES & self._features
        if weakened:  # checked on every use: a measurement built before stays refused too
            raise ConfigError(
                f"OpenDP features {sorted(weakened)} are enabled in this process; the"
                " agent releases telemetry only through OpenDP's exact mechanisms"
                f" (see {TELEMETRY_RUNBOOK})"
            )
        with self._lock:
            cached = self._measurements.get(scale)
            if cached is not None:
                return cached
            had_contrib = "contrib" in self._features
            dp.enable_features("contrib")  # OpenDP 0.16 flags every constructor (see above)
            try:
                measurement = dp.m.make_laplace(
                    dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64"), scale=scale
                )
            finally:
                if not had_contrib:
                    dp.disable_features("contrib")
            self._measurements[scale] = measurement
            return measurement

    def epsilon(self, scale: float, sensitivity: int) -> float:
        key = (scale, sensitivity)
        if key not in self._maps:
            self._maps[key] = float(self._measurement(scale).map(sensitivity))
        return self._maps[key]

    def release(self, values: Sequence[int], scale: float) -> list[int]:
        noisy = self._measurement(scale)([int(v) for v in values])
        return [int(v) for v in noisy]
