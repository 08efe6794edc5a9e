"""The pure trust checks, value in, value out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge_agent.errors import (
    BadUpdateError,
    ExpiredUpdateError,
    RollbackAttackError,
    UnsignedTargetError,
    UntrustedSignatureError,
)
from edge_agent.trust import DirectorTrust, SignedTarget, check_targets_signed, verify_assignment
from protocol import (
    ASSIGNMENT_PAYLOAD_TYPE,
    Assignment,
    Ed25519KeyPair,
    SignedEnvelope,
    generate_key_pair,
    sign_envelope,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SHA = "ab" * 32
TARGET = {
    "name": "smollm2",
    "path": f"{SHA}/smollm2.gguf",
    "sha256": SHA,
    "length": 1000,
    "kind": "llm",
    "format": "gguf",
}


def field_for(*keys: Ed25519KeyPair, threshold: int = 1) -> dict[str, object]:
    # deliberately labelled with arbitrary ids: the agent recomputes ids from the keys
    return {
        "threshold": threshold,
        "keys": {
            f"label-{i}": {"keytype": "ed25519", "public": k.public_hex} for i, k in enumerate(keys)
        },
    }


def envelope(
    signers: list[Ed25519KeyPair], *, version: int = 2, expires: datetime | None = None
) -> SignedEnvelope:
    payload = Assignment(
        device_id="dev-1",
        version=version,
        release_id="rel-1",
        release_name="demo",
        release_version="1",
        targets=[TARGET],  # type: ignore[list-item]
        issued_at=NOW - timedelta(hours=1),
        expires_at=expires or NOW + timedelta(days=1),
    ).model_dump(mode="json")
    return sign_envelope(ASSIGNMENT_PAYLOAD_TYPE, payload, signers)


def check(env: SignedEnvelope, trust: DirectorTrust, installed: int | None = 1) -> bool:
    return verify_assignment(
        env,
        director=trust,
        device_id="dev-1",
        installed_version=installed,
        highest_accepted_version=installed,
        now=NOW,
    ).is_new


def test_threshold_two_needs_two_distinct_director_signatures() -> None:
    a, b = generate_key_pair(), generate_key_pair()
    trust = DirectorTrust.from_root_field(field_for(a, b, threshold=2))
    assert check(envelope([a, b]), trust)
    with pytest.raises(UntrustedSignatureError):
        check(envelope([a, a]), trust)
    with pytest.raises(UntrustedSignatureError):
        check(envelope([a]), trust)


def test_a_root_without_a_director_field_trusts_no_director() -> None:
    with pytest.raises(UntrustedSignatureError, match="no 'x-outpost-director'"):
        DirectorTrust.from_root_signed({"version": 1})


def test_a_threshold_the_root_cannot_meet_is_refused() -> None:
    with pytest.raises(UntrustedSignatureError, match="requires 2"):
        DirectorTrust.from_root_field(field_for(generate_key_pair(), threshold=2))


def test_a_payload_of_another_type_is_refused_even_if_signed() -> None:
    key = generate_key_pair()
    trust = DirectorTrust.from_root_field(field_for(key))
    other = sign_envelope("application/vnd.outpost.other+json", {"device_id": "dev-1"}, [key])
    with pytest.raises(BadUpdateError, match="payload type"):
        check(other, trust)


def test_the_installed_version_again_is_nothing_new_even_when_expired() -> None:
    key = generate_key_pair()
    trust = DirectorTrust.from_root_field(field_for(key))
    stale = envelope([key], version=1, expires=NOW - timedelta(days=30))
    assert check(stale, trust, installed=1) is False
    with pytest.raises(ExpiredUpdateError):
        check(envelope([key], version=2, expires=NOW - timedelta(seconds=1)), trust)
    with pytest.raises(RollbackAttackError):
        check(envelope([key], version=1), trust, installed=5)


def test_targets_must_match_what_the_image_repository_signed() -> None:
    key = generate_key_pair()
    trust = DirectorTrust.from_root_field(field_for(key))
    assignment = verify_assignment(
        envelope([key]),
        director=trust,
        device_id="dev-1",
        installed_version=None,
        highest_accepted_version=None,
        now=NOW,
    ).assignment
    good = SignedTarget(TARGET["path"], SHA, 1000, {"kind": "llm", "format": "gguf"})  # type: ignore[arg-type]
    check_targets_signed(assignment, {good.path: good})
    for wrong in (
        SignedTarget(good.path, "cd" * 32, 1000, good.custom),
        SignedTarget(good.path, SHA, 1001, good.custom),
        SignedTarget(good.path, SHA, 1000, {"kind": "llm", "format": "onnx"}),
        None,
    ):
        with pytest.raises(UnsignedTargetError):
            check_targets_signed(assignment, {good.path: wrong})
