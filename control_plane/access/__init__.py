"""Who may do what: operator API tokens, roles and their permissions."""

from control_plane.access.roles import Permission, Role, permissions_of
from control_plane.access.tokens import (
    Principal,
    authenticate_api_token,
    create_api_token,
    new_secret,
    secret_hash,
)

__all__ = [
    "Permission",
    "Principal",
    "Role",
    "authenticate_api_token",
    "create_api_token",
    "new_secret",
    "permissions_of",
    "secret_hash",
]
