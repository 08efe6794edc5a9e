"""Remote config against the database: layer changes (audited), each device's signed
effective config (issued when it changes, re-signed past half its lifetime), and what
devices report back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.director.service import Director, root_trusts_director
from control_plane.errors import NotFoundError, PermissionDeniedError, ServiceUnavailableError
from control_plane.remote_config.core import (
    Layers,
    Scope,
    apply_change,
    build_document,
    needs_issue,
    sign_document,
)
from control_plane.storage.database import Database, retrying
from control_plane.storage.models import (
    ConfigLayer,
    ConfigReportRecord,
    Device,
    DeviceConfigRecord,
    Rollout,
    RolloutDevice,
)
from protocol.remote_config import ConfigReport, ConfigReportAck, config_digest

ChangeListener = Callable[[Sequence[str]], None]


@dataclass(frozen=True)
class LayerChange:
    """A stored change: the scope's new version and settings, and the devices it reaches."""

    layer: ConfigLayer
    device_ids: tuple[str, ...]


@dataclass(frozen=True)
class DeviceConfigView:
    """A device's config as the control plane sees it."""

    device_id: str
    effective: dict[str, Any]
    effective_digest: str
    layers: list[tuple[str, int, dict[str, Any]]]  # (scope, version, settings) applied
    issued: DeviceConfigRecord | None
    report: ConfigReportRecord | None


def _newest_layers(session: Session) -> list[ConfigLayer]:
    newest = (
        select(ConfigLayer.scope, ConfigLayer.key, func.max(ConfigLayer.version).label("v"))
        .group_by(ConfigLayer.scope, ConfigLayer.key)
        .subquery()
    )
    return list(
        session.scalars(
            select(ConfigLayer).join(
                newest,
                (ConfigLayer.scope == newest.c.scope)
                & (ConfigLayer.key == newest.c.key)
                & (ConfigLayer.version == newest.c.v),
            )
        )
    )


def rollout_patches(
    session: Session, device_id: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The patches of the config rollouts that reached each device and are still in force
    there: not rolled back, not yet folded into their scope (oldest rollout first)."""
    query = (
        select(RolloutDevice.device_id, Rollout.config_patch)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(
            Rollout.kind == "config",
            Rollout.state != "completed",
            RolloutDevice.rollback_assignment_version.is_(None),
        )
        .order_by(Rollout.created_at, Rollout.id)
    )
    if device_id is not None:
        query = query.where(RolloutDevice.device_id == device_id)
    out: dict[str, list[dict[str, Any]]] = {}
    for member, patch in session.execute(query):
        if patch:
            out.setdefault(member, []).append(patch)
    return out


def _rollout_layers_of(session: Session, device_id: str) -> list[tuple[str, dict[str, Any]]]:
    rows = session.execute(
        select(Rollout.id, Rollout.config_patch)
        .join(RolloutDevice, Rollout.id == RolloutDevice.rollout_id)
        .where(
            RolloutDevice.device_id == device_id,
            Rollout.kind == "config",
            Rollout.state != "completed",
            RolloutDevice.rollback_assignment_version.is_(None),
        )
        .order_by(Rollout.created_at, Rollout.id)
    )
    return [(rollout_id, patch) for rollout_id, patch in rows if patch]


def current_layers(session: Session, device_id: str | None = None) -> Layers:
    """Every scope's newest layer, and the rollout patches (of one device, or all)."""
    fleet: dict[str, Any] = {}
    tags: dict[str, dict[str, Any]] = {}
    devices: dict[str, dict[str, Any]] = {}
    for layer in _newest_layers(session):
        if layer.scope == "fleet":
            fleet = layer.settings
        elif layer.scope == "tag":
            tags[layer.key] = layer.settings
        else:
            devices[layer.key] = layer.settings
    return Layers(
        fleet=fleet, tags=tags, devices=devices, rollouts=rollout_patches(session, device_id)
    )


def set_layer(
    session: Session, scope: Scope, patch: Any, *, actor: str, now: datetime
) -> ConfigLayer:
    """Merge ``patch`` into ``scope``'s layer as its next version, in ``session``
    (audited as ``config.set``); refused whole, naming each pointer and rule, if invalid."""
    previous = session.scalars(
        select(ConfigLayer)
        .where(ConfigLayer.scope == scope.kind, ConfigLayer.key == scope.key)
        .order_by(ConfigLayer.version.desc())
        .limit(1)
    ).first()
    settings = apply_change(scope, previous.settings if previous else {}, patch)
    layer = ConfigLayer(
        scope=scope.kind,
        key=scope.key,
        version=1 if previous is None else previous.version + 1,
        settings=settings,
        patch=dict(patch),
        changed_at=now,
        changed_by=actor,
    )
    session.add(layer)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="config.set",
        target=str(scope),
        now=now,
        details={"version": layer.version, "patch": dict(patch)},
    )
    return layer


def reached_devices(session: Session, scope: Scope) -> list[str]:
    """The enrolled devices a scope's layer applies to."""
    if scope.kind == "device":
        return [scope.key]
    rows = session.execute(select(Device.id, Device.tags)).all()
    return [device_id for device_id, tags in rows if scope.matches(device_id, tags or [])]


def _latest_issued(session: Session, device_id: str) -> DeviceConfigRecord | None:
    return session.scalars(
        select(DeviceConfigRecord)
        .where(DeviceConfigRecord.device_id == device_id)
        .order_by(DeviceConfigRecord.version.desc())
        .limit(1)
    ).first()


def _latest_report(session: Session, device_id: str) -> ConfigReportRecord | None:
    return session.scalars(
        select(ConfigReportRecord)
        .where(ConfigReportRecord.device_id == device_id)
        .order_by(ConfigReportRecord.config_version.desc(), ConfigReportRecord.id.desc())
        .limit(1)
    ).first()


class RemoteConfigService:
    """Layer changes, per-device signed configs, device reports."""

    def __init__(
        self,
        db: Database,
        director: Director,
        ttl: timedelta,
        *,
        on_change: ChangeListener | None = None,
    ) -> None:
        self.db = db
        self.director = director
        self.ttl = ttl
        self._listeners: list[ChangeListener] = [on_change] if on_change else []

    def add_listener(self, listener: ChangeListener) -> None:
        """Called (after commit) with the devices whose effective config may have changed."""
        self._listeners.append(listener)

    def _notify(self, device_ids: Sequence[str]) -> None:
        for listener in self._listeners:
            listener(device_ids)

    # --- operators ----------------------------------------------------------------------

    def set(self, scope: Scope, patch: Any, *, actor: str, now: datetime) -> LayerChange:
        """Merge ``patch`` into ``scope``'s layer as its next version (audited as
        ``config.set``); refused whole, naming each pointer and rule, if invalid."""

        def work(session: Session) -> LayerChange:
            if scope.kind == "device" and session.get(Device, scope.key) is None:
                raise NotFoundError(f"no device with id {scope.key!r}")
            layer = set_layer(session, scope, patch, actor=actor, now=now)
            return LayerChange(layer=layer, device_ids=tuple(reached_devices(session, scope)))

        change = retrying(self.db, work)
        self._notify(change.device_ids)
        return change

    def history(self, scope: Scope | None = None, *, limit: int = 100) -> list[ConfigLayer]:
        """Layer versions, newest first (one scope, or all)."""
        query = select(ConfigLayer).order_by(ConfigLayer.id.desc()).limit(limit)
        if scope is not None:
            query = query.where(ConfigLayer.scope == scope.kind, ConfigLayer.key == scope.key)
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def view(self, device_id: str) -> DeviceConfigView:
        """Effective config of ``device_id``, the layers behind it, what was issued and
        what the device last reported."""
        with self.db.transaction() as session:
            device = session.get(Device, device_id)
            if device is None:
                raise NotFoundError(f"no device with id {device_id!r}")
            tags = list(device.tags or [])
            applied: list[tuple[str, int, dict[str, Any]]] = []
            for layer in sorted(_newest_layers(session), key=_layer_order):
                scope = Scope.stored(layer.scope, layer.key)
                if scope.matches(device_id, tags):
                    applied.append((str(scope), layer.version, layer.settings))
            at = next((i for i, a in enumerate(applied) if a[0].startswith("device:")), None)
            applied[at if at is not None else len(applied) : at] = [
                (f"rollout:{rollout_id}", 0, patch)
                for rollout_id, patch in _rollout_layers_of(session, device_id)
            ]
            effective = current_layers(session, device_id).effective(device_id, tags)
            return DeviceConfigView(
                device_id=device_id,
                effective=effective,
                effective_digest=config_digest(effective),
                layers=applied,
                issued=_latest_issued(session, device_id),
                report=_latest_report(session, device_id),
            )

    # --- devices ------------------------------------------------------------------------

    def current(self, device_id: str, now: datetime) -> DeviceConfigRecord | None:
        """The device's newest signed config; a new version is signed first when its
        effective config changed or the newest is past half its lifetime."""

        def work(session: Session) -> DeviceConfigRecord | None:
            device = session.get(Device, device_id)
            if device is None:
                raise NotFoundError(f"no device with id {device_id!r}")
            layers = current_layers(session, device_id)
            effective = layers.effective(device_id, list(device.tags or []))
            digest = config_digest(effective)
            latest = _latest_issued(session, device_id)
            if not needs_issue(
                issued_digest=latest.digest if latest else None,
                issued_at=latest.issued_at if latest else None,
                expires_at=latest.expires_at if latest else None,
                effective_digest=digest,
                now=now,
            ):
                return latest
            key = self.director.key
            if not root_trusts_director(session, key):
                raise ServiceUnavailableError(
                    "the director key file is not the key the current root trusts; retry"
                    " shortly, else see docs/runbooks/cp-online-key-compromise.md"
                )
            document = build_document(
                device_id=device_id,
                version=1 if latest is None else latest.version + 1,
                settings=effective,
                now=now,
                ttl=self.ttl,
            )
            record = DeviceConfigRecord(
                device_id=device_id,
                version=document.version,
                settings=effective,
                digest=digest,
                envelope=sign_document(document, key).model_dump_json(),
                issued_at=document.issued_at,
                expires_at=document.expires_at,
                issued_by="director",
            )
            session.add(record)
            session.flush()  # a concurrent issue of the same version fails here: retried
            return record

        return retrying(self.db, work)

    def record_report(self, signer: str, report: ConfigReport, now: datetime) -> ConfigReportAck:
        """Store a device's config report once (by ``report_id``)."""
        if report.device_id != signer:
            raise PermissionDeniedError(
                f"the config report is about device {report.device_id!r} but was signed by"
                f" {signer!r}; a device may only report about itself"
            )
        try:
            with self.db.transaction() as session:
                seen = session.scalars(
                    select(ConfigReportRecord.id).where(
                        ConfigReportRecord.report_id == report.report_id
                    )
                ).first()
                if seen is not None:
                    return ConfigReportAck(report_id=report.report_id, duplicate=True)
                session.add(
                    ConfigReportRecord(
                        report_id=report.report_id,
                        device_id=signer,
                        config_version=report.config_version,
                        state=report.state,
                        detail=report.detail,
                        at=report.at if report.at.tzinfo else report.at.replace(tzinfo=UTC),
                        received_at=now,
                    )
                )
                session.flush()
        except IntegrityError:
            return ConfigReportAck(report_id=report.report_id, duplicate=True)
        return ConfigReportAck(report_id=report.report_id, duplicate=False)


_ORDER = {"fleet": 0, "tag": 1, "device": 2}


def _layer_order(layer: ConfigLayer) -> tuple[int, str]:
    return (_ORDER.get(layer.scope, 3), layer.key)
