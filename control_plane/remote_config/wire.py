"""Wire models of the remote-config API (separate from storage rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from control_plane.remote_config.service import DeviceConfigView, LayerChange
from control_plane.storage.models import ConfigLayer


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True)


class ConfigLayerPublic(_Wire):
    scope: str
    version: int
    settings: dict[str, Any]
    patch: dict[str, Any]
    changed_at: datetime
    changed_by: str

    @classmethod
    def of(cls, layer: ConfigLayer) -> ConfigLayerPublic:
        scope = layer.scope if layer.scope == "fleet" else f"{layer.scope}:{layer.key}"
        return cls(
            scope=scope,
            version=layer.version,
            settings=layer.settings,
            patch=layer.patch,
            changed_at=layer.changed_at,
            changed_by=layer.changed_by,
        )


class ConfigChangePublic(_Wire):
    layer: ConfigLayerPublic
    devices_reached: int

    @classmethod
    def of(cls, change: LayerChange) -> ConfigChangePublic:
        return cls(layer=ConfigLayerPublic.of(change.layer), devices_reached=len(change.device_ids))


class AppliedLayer(_Wire):
    scope: str
    version: int
    settings: dict[str, Any]


class IssuedConfig(_Wire):
    version: int
    digest: str
    issued_at: datetime
    expires_at: datetime


class ConfigStatusPublic(_Wire):
    """The device's newest report: ``applied``, ``rejected`` or ``reverted``, and why."""

    config_version: int
    state: str
    detail: str
    at: datetime
    received_at: datetime


class DeviceConfigPublic(_Wire):
    device_id: str
    effective: dict[str, Any]
    effective_digest: str
    layers: list[AppliedLayer]
    issued: IssuedConfig | None
    status: ConfigStatusPublic | None
    in_sync: bool  # the device reported "applied" for a version with the effective digest

    @classmethod
    def of(cls, view: DeviceConfigView) -> DeviceConfigPublic:
        issued = view.issued
        report = view.report
        in_sync = (
            issued is not None
            and report is not None
            and report.state == "applied"
            and report.config_version == issued.version
            and issued.digest == view.effective_digest
        )
        return cls(
            device_id=view.device_id,
            effective=view.effective,
            effective_digest=view.effective_digest,
            layers=[AppliedLayer(scope=s, version=v, settings=c) for s, v, c in view.layers],
            issued=None
            if issued is None
            else IssuedConfig(
                version=issued.version,
                digest=issued.digest,
                issued_at=issued.issued_at,
                expires_at=issued.expires_at,
            ),
            status=None
            if report is None
            else ConfigStatusPublic(
                config_version=report.config_version,
                state=report.state,
                detail=report.detail,
                at=report.at,
                received_at=report.received_at,
            ),
            in_sync=in_sync,
        )
