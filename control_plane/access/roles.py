"""Roles and the permissions each grants (pure).

Operators roll releases out; release managers build and publish them. Neither can do
the other's job, so publishing and deploying need two people unless an admin does both.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    RELEASE_MANAGER = "release-manager"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"  # devices, releases, artifacts
    ENROLL = "enroll"  # create enrollment tokens
    ASSIGN = "assign"  # assign a release to a device
    PUBLISH = "publish"  # upload artifacts, create and publish releases
    ADMINISTER = "administer"  # API tokens, the audit log


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.ENROLL, Permission.ASSIGN}),
    Role.RELEASE_MANAGER: frozenset({Permission.READ, Permission.PUBLISH}),
    Role.ADMIN: frozenset(Permission),
}


def permissions_of(role: Role) -> frozenset[Permission]:
    return _GRANTS[role]
