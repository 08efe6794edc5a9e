"""The offline bundle: one tar file that installs a release on a device with no network.

Written by ``outpost-cp bundle create`` (control plane), read by ``outpost-agent
install-bundle``. Layout (every member under :data:`BUNDLE_ROOT`, regular files only)::

    outpost-bundle/manifest.json          director-signed envelope of a BundleManifest
    outpost-bundle/assignment.json        director-signed Assignment (device or device class)
    outpost-bundle/metadata/N.root.json   the image repository's whole root chain, 1..N
    outpost-bundle/metadata/timestamp.json, S.snapshot.json, T.targets.json
    outpost-bundle/targets/<target path>  every artifact of the release
    outpost-bundle/wheels/*.whl           optional: the agent and its dependencies
    outpost-bundle/sbom.cdx.json          CycloneDX 1.5 SBOM (models and packages)
    outpost-bundle/licenses.json          license inventory (a LicenseInventory)

The manifest lists every other member with its sha256 and length, so nothing can be
added, swapped or cut short without the director's signature failing or a hash
mismatching; the TUF metadata and the assignment are verified exactly as for a network
update. Format: docs/packaging.md.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.version import PROTOCOL_VERSION

BUNDLE_FORMAT: Literal[1] = 1
BUNDLE_ROOT = "outpost-bundle"
MANIFEST_FILE = "manifest.json"
ASSIGNMENT_FILE = "assignment.json"
METADATA_DIR = "metadata"
TARGETS_DIR = "targets"
WHEELS_DIR = "wheels"
SBOM_FILE = "sbom.cdx.json"
LICENSES_FILE = "licenses.json"
BUNDLE_MANIFEST_PAYLOAD_TYPE = "application/vnd.outpost.bundle-manifest+json"

# An assignment or manifest for a device class is bound to this pseudo device id. Device
# ids the control plane hands out never contain ":", so a class binding can never be
# mistaken for a device's own assignment.
DEVICE_CLASS_PREFIX = "device-class:"
DEVICE_CLASS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

# Refused before anything is extracted: more members, a longer manifest or a longer
# member name than this is not a bundle this project writes.
MAX_MEMBERS = 4096
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBER_NAME = 400


def device_class_binding(device_class: str) -> str:
    """The pseudo device id that binds a document to every device of ``device_class``."""
    if not DEVICE_CLASS_PATTERN.fullmatch(device_class):
        raise ValueError(
            f"device class {device_class!r} is not a short lowercase name (a-z, 0-9, . _ -)"
        )
    return DEVICE_CLASS_PREFIX + device_class


class BundleFile(BaseModel):
    """One member of the bundle, relative to :data:`BUNDLE_ROOT`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1, max_length=MAX_MEMBER_NAME)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    length: int = Field(ge=0)


class BundleManifest(BaseModel):
    """What the director signs for a bundle. ``device_id`` is a device's id or a
    :func:`device_class_binding`; ``expires_at``: no new install from this bundle after
    it (a device keeps serving what it installed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = BUNDLE_FORMAT
    protocol_version: int = PROTOCOL_VERSION
    device_id: str = Field(min_length=1, max_length=128)
    release_id: str
    release_name: str
    release_version: str
    assignment_version: int = Field(ge=1)
    root_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    expires_at: datetime
    files: list[BundleFile] = Field(max_length=MAX_MEMBERS)


class LicenseEntry(BaseModel):
    """One model or package in the bundle and the license it ships under (SPDX)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["model", "package"]
    name: str
    version: str
    license: str


class LicenseInventory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    entries: list[LicenseEntry]
