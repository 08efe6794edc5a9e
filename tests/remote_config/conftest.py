"""Fixtures shared with the control-plane tests (an initialized control plane)."""

from tests.control_plane.conftest import cp

__all__ = ["cp"]
