"""Every error the simulator raises, grouped by whose fault it is."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of the simulator's errors. The message says what happened and what to do."""


class SetupError(SimulatorError):
    """The simulation was asked for something impossible (a bad spec, flag or state file)."""


class ServerError(SimulatorError):
    """The control plane could not be reached, or answered something it should not."""
