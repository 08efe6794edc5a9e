"""Remote config on the device: verify the director's signed config document, put it in
force live, health-check it, keep or revert it, and report what happened.

``verify`` is pure (trust checks over values); ``live`` holds the config in force for
the parts that read it; ``sync`` is the loop that talks to the control plane; ``health``
checks the active release under a new config; the MQTT "check now" session lives in
:mod:`edge_agent.uplink.mqtt`.
"""

from edge_agent.remote_config.live import ChatDefaults, LiveConfig, RateLimitedError
from edge_agent.remote_config.sync import (
    CONFIG_RUNBOOK,
    ConfigClient,
    ConfigHealthProbe,
    ConfigOutcome,
    ConfigSync,
)
from edge_agent.remote_config.verify import (
    ConfigVerdict,
    InvalidRemoteConfigError,
    verify_config_document,
)

__all__ = [
    "CONFIG_RUNBOOK",
    "ChatDefaults",
    "ConfigClient",
    "ConfigHealthProbe",
    "ConfigOutcome",
    "ConfigSync",
    "ConfigVerdict",
    "InvalidRemoteConfigError",
    "LiveConfig",
    "RateLimitedError",
    "verify_config_document",
]
