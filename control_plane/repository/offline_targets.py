"""Targets metadata signed away from the server, by the release manager (pure).

The server proposes the next targets version (:func:`next_targets`), the release
manager signs it on their own machine, and the server accepts the signed file only
if :func:`check_signed_targets` finds it signed by the key root trusts, the very next
version, unexpired, keeping every published target unchanged and adding exactly the
pending ones. Values in, values out; time passed in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from securesystemslib.signer import SSlibKey
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from control_plane.errors import TargetsSignatureRejectedError, TargetsVersionConflictError

_SERIALIZER = JSONSerializer(compact=False)
_LISTED = 5  # paths named in an error message


def _copy(target: TargetFile) -> TargetFile:
    return TargetFile.from_dict(target.to_dict(), target.path)


def _names(paths: Iterable[str]) -> str:
    items = sorted(paths)
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def next_targets(
    current: Metadata[Targets], pending: Mapping[str, TargetFile], *, expires: datetime
) -> Metadata[Targets]:
    """The unsigned next targets version: every current target plus the pending ones."""
    listed = {path: _copy(t) for path, t in current.signed.targets.items()}
    listed.update({path: _copy(t) for path, t in pending.items()})
    signed = Targets(
        version=current.signed.version + 1,
        spec_version=current.signed.spec_version,
        expires=expires.replace(microsecond=0),
        targets=listed,
        delegations=current.signed.delegations,
        unrecognized_fields=dict(current.signed.unrecognized_fields),
    )
    return Metadata(signed)


def serialize(metadata: Metadata[Targets]) -> bytes:
    return metadata.to_bytes(_SERIALIZER)


def targets_key_ids(root: Root) -> list[str]:
    return list(root.roles[Targets.type].keyids)


def signed_by(metadata: Metadata[Targets], key: SSlibKey) -> bool:
    """Whether ``metadata`` carries a valid signature by ``key``."""
    signature = metadata.signatures.get(key.keyid)
    if signature is None:
        return False
    try:
        key.verify_signature(signature, metadata.signed_bytes)
    except Exception:  # securesystemslib raises several types for a bad signature
        return False
    return True


def check_signed_targets(
    root: Metadata[Root],
    current: Metadata[Targets],
    pending: Mapping[str, TargetFile],
    uploaded: bytes,
    now: datetime,
) -> Metadata[Targets]:
    """The uploaded targets metadata, if it may become the next version; else raise.

    Raises :class:`TargetsSignatureRejectedError` (bad file, signature, expiry or
    content) or :class:`TargetsVersionConflictError` (not the next version, or the
    pending targets changed since it was fetched).
    """
    try:
        metadata = Metadata[Targets].from_bytes(uploaded)
    except DeserializationError as e:
        raise TargetsSignatureRejectedError(
            f"the upload is not TUF targets metadata: {e}; upload the file that"
            " 'outpost-cp sign-targets' signed"
        ) from e
    signed = metadata.signed
    if not isinstance(signed, Targets):
        raise TargetsSignatureRejectedError(
            f"the upload is {signed.type} metadata, not targets metadata"
        )
    try:
        root.signed.verify_delegate(Targets.type, metadata.signed_bytes, metadata.signatures)
    except UnsignedMetadataError as e:
        raise TargetsSignatureRejectedError(
            "the targets metadata is not signed by the targets key that root trusts"
            f" (key ids {', '.join(targets_key_ids(root.signed))}): sign it with the"
            " targets.key created by 'outpost-cp init'. Nothing was changed"
        ) from e
    expected = current.signed.version + 1
    if signed.version != expected:
        raise TargetsVersionConflictError(
            f"the signed targets metadata is version {signed.version}, but the repository"
            f" is at version {current.signed.version} and accepts only version {expected}:"
            " an old or replayed signature. Run 'outpost-cp sign-targets' again."
            " Nothing was changed"
        )
    if signed.is_expired(now):
        raise TargetsSignatureRejectedError(
            f"the signed targets metadata expired at {signed.expires.isoformat()};"
            " sign a fresh copy. Nothing was changed"
        )
    _check_content(current.signed, pending, signed)
    return metadata


def _check_content(current: Targets, pending: Mapping[str, TargetFile], signed: Targets) -> None:
    listed = signed.targets
    dropped = [p for p in current.targets if p not in listed]
    if dropped:
        raise TargetsSignatureRejectedError(
            f"the signed targets metadata drops published targets ({_names(dropped)}) that"
            " devices may run; targets are never removed this way. Nothing was changed"
        )
    wanted = {**current.targets, **pending}
    changed = [p for p, t in listed.items() if p in wanted and wanted[p] != t]
    if changed:
        raise TargetsSignatureRejectedError(
            f"the signed targets metadata changes the hashes, length or custom data of"
            f" {_names(changed)}; sign the metadata exactly as the server proposed it."
            " Nothing was changed"
        )
    unexpected = [p for p in listed if p not in wanted]
    if unexpected:
        raise TargetsSignatureRejectedError(
            f"the signed targets metadata lists targets no pending release asked for"
            f" ({_names(unexpected)}). Nothing was changed"
        )
    missing = [p for p in pending if p not in listed]
    if missing:
        raise TargetsVersionConflictError(
            f"the signed targets metadata misses pending targets ({_names(missing)}):"
            " a release was created after it was fetched. Run 'outpost-cp sign-targets'"
            " again. Nothing was changed"
        )
    if signed.delegations != current.delegations or (
        signed.unrecognized_fields != current.unrecognized_fields
    ):
        raise TargetsSignatureRejectedError(
            "the signed targets metadata changes delegations or extra fields; only"
            " targets may change. Nothing was changed"
        )
