"""The TUF image repository: every artifact the fleet may run, signed by role keys."""

from control_plane.repository.image_repository import (
    ImageRepository,
    MetadataFiles,
    RepositoryLifetimes,
    RoleKeys,
    sslib_key,
    tuf_signer,
)

__all__ = [
    "ImageRepository",
    "MetadataFiles",
    "RepositoryLifetimes",
    "RoleKeys",
    "sslib_key",
    "tuf_signer",
]
