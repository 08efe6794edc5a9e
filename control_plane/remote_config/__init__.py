"""Remote config: scope layers (fleet < tag < device), the effective config of each
device, and its signed, versioned delivery. ``core`` is pure; ``service`` owns the
database; the API's wire models are in ``wire``."""

from control_plane.remote_config.core import ConfigValidationError, Scope
from control_plane.remote_config.service import RemoteConfigService

__all__ = ["ConfigValidationError", "RemoteConfigService", "Scope"]
