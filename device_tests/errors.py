"""Errors of the acceptance suite, by whose fault they are; each maps to an exit code.

Exit codes of ``python -m device_tests``: 0 every figure passed; 1 a figure failed or is
inconclusive; 2 the run could not be judged (a bad profile or argument, an agent that does
not answer or refuses the token). A usage error never looks like a failed threshold.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_PASSED",
    "EXIT_USAGE",
    "AgentAuthError",
    "AgentError",
    "AgentUnreachableError",
    "DeviceTestError",
    "ProfileError",
    "WorkloadError",
]

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class DeviceTestError(Exception):
    """Root: the suite could not be run or judged (exit code 2). The message says what
    happened and what to do."""

    exit_code = EXIT_USAGE


class ProfileError(DeviceTestError):
    """A profile file (or a release's acceptance block) is not valid: the operator's."""


class WorkloadError(DeviceTestError):
    """The fixed workload shipped with the suite is missing or damaged: the install's."""


class AgentError(DeviceTestError):
    """The agent under test answered in a way the suite cannot measure."""


class AgentUnreachableError(AgentError):
    """Nothing answers at the agent's address (not started, wrong URL or port)."""


class AgentAuthError(AgentError):
    """The agent refused the API token (wrong or missing ``--token``)."""
