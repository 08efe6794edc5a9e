"""The director: decides and signs which release each device should run."""

from control_plane.director.assignment import (
    ReleaseFacts,
    build_assignment,
    needs_reissue,
    next_version,
    sign_assignment,
)

__all__ = ["ReleaseFacts", "build_assignment", "needs_reissue", "next_version", "sign_assignment"]
