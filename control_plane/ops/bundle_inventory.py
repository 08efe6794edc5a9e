"""What a bundle ships, and under which licenses: the license inventory, the allow-list
check and the CycloneDX SBOM (pure: bytes and values in, values out).

Package licenses come from each wheel's ``METADATA``: ``License-Expression`` (SPDX) when
present, else the ``License`` field or the trove classifiers, read through the
allow-list file's ``aliases``; the file's ``packages`` table settles the few packages
whose metadata says nothing usable. Model licenses come from the artifact's ``license``
custom field or the release manager's ``--model-license NAME=SPDX``.
"""

from __future__ import annotations

import email.parser
import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from control_plane.errors import InvalidRequestError
from protocol.bundle import LicenseEntry

UNKNOWN_LICENSE = "NOASSERTION"
_CLASSIFIER = "License :: "


class LicenseNotAllowedError(InvalidRequestError):
    """A model or package in the bundle has a license the project's allow-list lacks."""

    error_type = "license_not_allowed"


@dataclass(frozen=True)
class LicensePolicy:
    """The project's allow-list (``packaging/license-allowlist.json``)."""

    allowed: frozenset[str]
    aliases: Mapping[str, str]
    packages: Mapping[str, str]

    @classmethod
    def from_file(cls, path: Path) -> LicensePolicy:
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                allowed=frozenset(str(x) for x in body["allowed"]),
                aliases={str(k): str(v) for k, v in body.get("aliases", {}).items()},
                packages={_norm(str(k)): str(v) for k, v in body.get("packages", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidRequestError(f"cannot read the license allow-list {path}: {e}") from e

    def spdx(self, declared: str) -> str:
        """``declared`` as SPDX, through the aliases (unchanged when it has none)."""
        text = declared.strip()
        return self.aliases.get(text, text)

    def permits(self, expression: str) -> bool:
        """``A OR B``: one alternative must be allowed; ``A AND B``: every part. With
        parentheses, conservatively, every identifier must be allowed."""
        if not expression or expression == UNKNOWN_LICENSE:
            return False
        if "(" in expression or ")" in expression:
            ids = re.split(r"\s+(?:AND|OR|WITH)\s+|[()\s]+", expression)
            return all(i in self.allowed for i in ids if i)
        for alternative in re.split(r"\s+OR\s+", expression):
            parts = [p.strip() for p in re.split(r"\s+AND\s+", alternative)]
            if all(p in self.allowed for p in parts):
                return True
        return False


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    """A wheel file in the bundle and what its metadata declares."""

    path: Path
    name: str
    version: str
    license: str


def read_wheel(path: Path, policy: LicensePolicy) -> Wheel:
    """Name, version and SPDX license of the wheel at ``path``."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise InvalidRequestError(f"{path.name} is not a wheel (no single METADATA)")
            raw = z.read(names[0]).decode("utf-8", errors="replace")
    except (OSError, zipfile.BadZipFile) as e:
        raise InvalidRequestError(f"{path.name} is not a readable wheel: {e}") from e
    meta = email.parser.Parser().parsestr(raw, headersonly=True)
    name, version = str(meta.get("Name", "")), str(meta.get("Version", ""))
    if not name or not version:
        raise InvalidRequestError(f"{path.name}'s METADATA names no package and version")
    return Wheel(path, name, version, _wheel_license(name, meta, policy))


def _wheel_license(name: str, meta: Any, policy: LicensePolicy) -> str:
    settled = policy.packages.get(_norm(name))
    if settled is not None:
        return settled
    expression = meta.get("License-Expression")
    if expression:
        return policy.spdx(str(expression))
    declared = meta.get("License")
    if declared and len(str(declared)) <= 100:
        spdx = policy.spdx(str(declared))
        if policy.permits(spdx):
            return spdx
    classifiers = [
        policy.spdx(str(c).rsplit(" :: ", 1)[-1])
        for c in meta.get_all("Classifier", [])
        if str(c).startswith(_CLASSIFIER)
    ]
    if classifiers:
        return " OR ".join(dict.fromkeys(classifiers))
    return policy.spdx(str(declared)) if declared else UNKNOWN_LICENSE


def inventory(
    models: Sequence[tuple[str, str, str]], wheels: Sequence[Wheel]
) -> list[LicenseEntry]:
    """``models``: (name, version, SPDX license) of each artifact."""
    entries = [LicenseEntry(kind="model", name=n, version=v, license=lic) for n, v, lic in models]
    entries += [
        LicenseEntry(kind="package", name=w.name, version=w.version, license=w.license)
        for w in wheels
    ]
    return entries


def check_licenses(entries: Sequence[LicenseEntry], policy: LicensePolicy, *, where: Path) -> None:
    """Raise :class:`LicenseNotAllowedError` naming every entry the allow-list refuses."""
    refused = [e for e in entries if not policy.permits(e.license)]
    if refused:
        listed = "; ".join(f"{e.kind} {e.name} {e.version}: {e.license}" for e in refused)
        raise LicenseNotAllowedError(
            f"not on the license allow-list ({where}): {listed}. Give a model's license with"
            " --model-license NAME=SPDX, or (after legal review) add the license to the"
            " allow-list; see docs/runbooks/bundle-refused.md"
        )


def cyclonedx_sbom(
    *,
    release: str,
    release_version: str,
    models: Sequence[tuple[str, str, str, str]],
    wheels: Sequence[tuple[Wheel, str]],
    serial: str,
    now: datetime,
) -> dict[str, Any]:
    """A CycloneDX 1.5 JSON SBOM. ``models``: (name, version, license, sha256);
    ``wheels``: (wheel, sha256 of its file)."""

    def licenses(expression: str) -> list[dict[str, Any]]:
        return [] if expression == UNKNOWN_LICENSE else [{"expression": expression}]

    components: list[dict[str, Any]] = [
        {
            "type": "machine-learning-model",
            "bom-ref": f"model:{name}",
            "name": name,
            "version": version,
            "hashes": [{"alg": "SHA-256", "content": sha256}],
            "licenses": licenses(license_),
        }
        for name, version, license_, sha256 in models
    ]
    components += [
        {
            "type": "library",
            "bom-ref": f"pypi:{wheel.name}@{wheel.version}",
            "name": wheel.name,
            "version": wheel.version,
            "purl": f"pkg:pypi/{_norm(wheel.name)}@{wheel.version}",
            "hashes": [{"alg": "SHA-256", "content": sha256}],
            "licenses": licenses(wheel.license),
        }
        for wheel, sha256 in wheels
    ]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": serial,
        "version": 1,
        "metadata": {
            "timestamp": now.isoformat(),
            "component": {
                "type": "application",
                "bom-ref": f"release:{release}@{release_version}",
                "name": release,
                "version": release_version,
            },
        },
        "components": components,
    }
