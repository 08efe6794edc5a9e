"""Offline signing: the targets key stays on the release manager's machine.

Without ``targets.key`` on the server a release waits in ``pending-signature``; the
release manager signs the proposed targets metadata with ``outpost-cp sign-targets``
and the server accepts only a correct signature over exactly what it proposed.
"""

from __future__ import annotations

import copy
import io
import shutil
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization.json import JSONSerializer

from control_plane.cli import main
from control_plane.ops.sign_targets import SigningAbortedError, sign_targets
from control_plane.repository import tuf_signer
from protocol.keys import Ed25519KeyPair, generate_key_pair, load_private_key, write_private_key
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    sha256_hex,
    small_gguf,
)
from tests.control_plane.test_repository_http import updater
from tests.live_server import serving


def take_targets_key_offline(cp: ControlPlaneUnderTest, tmp_path: Path) -> Path:
    """Move targets.key off the server, as a release manager would; return its new path."""
    usb = tmp_path / "usb-stick"
    usb.mkdir()
    moved = usb / "targets.key"
    shutil.move(cp.settings.resolved_offline_keys_dir / "targets.key", moved)
    return moved


def token_file(cp: ControlPlaneUnderTest, tmp_path: Path) -> Path:
    cp.auth("release-manager")
    path = tmp_path / "release-manager.token"
    path.write_text(cp.tokens["release-manager"] + "\n")
    return path


def pending(cp: ControlPlaneUnderTest) -> dict[str, Any]:
    r = cp.client.get("/api/v1/repository/pending-targets", headers=cp.auth("release-manager"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def signed_upload(metadata: dict[str, Any], key: Ed25519KeyPair) -> bytes:
    md = Metadata[Targets].from_dict(copy.deepcopy(metadata))
    md.sign(tuf_signer(key))
    return md.to_bytes(JSONSerializer(compact=False))


def put_targets(cp: ControlPlaneUnderTest, content: bytes) -> Any:
    return cp.client.put(
        "/api/v1/repository/targets",
        content=content,
        headers={**cp.auth("release-manager"), "Content-Type": "application/json"},
    )


def release_state(cp: ControlPlaneUnderTest, release_id: str) -> str:
    r = cp.client.get(f"/api/v1/releases/{release_id}", headers=cp.auth())
    state: str = r.json()["state"]
    return state


def actions(cp: ControlPlaneUnderTest) -> list[str]:
    return [e["action"] for e in cp.audit()]


def test_without_the_targets_key_a_release_waits_and_cannot_be_assigned(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    take_targets_key_offline(cp, tmp_path)
    device = cp.enroll()
    artifact = cp.upload(small_gguf(tmp_path))
    release = cp.publish([artifact["id"]])
    assert release["state"] == "pending-signature"
    assert release["targets_version"] == 2
    assert cp.client.get("/repo/metadata/2.targets.json").status_code == 404
    assert cp.client.get(f"/repo/targets/{artifact['target_path']}").status_code == 404
    r = cp.client.post(
        f"/api/v1/devices/{device.id}/assignment",
        json={"release_id": release["id"]},
        headers=cp.auth("operator"),
    )
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "release_awaiting_signature"
    assert "awaits the release manager's signature" in r.json()["error"]["message"]
    assert "release.await_signature" in actions(cp)
    proposal = pending(cp)
    assert proposal["version"] == 2
    assert proposal["metadata"]["signatures"] == []
    assert proposal["metadata"]["signed"]["version"] == 2
    assert list(proposal["metadata"]["signed"]["targets"]) == [artifact["target_path"]]
    assert [r["id"] for r in proposal["releases"]] == [release["id"]]


def test_sign_targets_cli_publishes_and_ngclient_finds_the_targets(
    cp: ControlPlaneUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first_data = small_gguf(tmp_path, seed=1)
    first = cp.upload(first_data, name="chat")
    cp.publish([first["id"]], version="1")  # online, while the key is still on the server
    key_path = take_targets_key_offline(cp, tmp_path)
    second_data = small_gguf(tmp_path, seed=2)
    second = cp.upload(second_data, name="chat")
    embedder = cp.upload(small_gguf(tmp_path, seed=3), name="embedder")
    waiting = [
        cp.publish([second["id"]], version="2"),
        cp.publish([second["id"], embedder["id"]], name="rag", version="1"),
    ]
    assert {r["state"] for r in waiting} == {"pending-signature"}
    with serving(cp.app) as base:
        rc = main(
            [
                "sign-targets",
                "--server",
                base,
                "--token-file",
                str(token_file(cp, tmp_path)),
                "--key",
                str(key_path),
                "--yes",
            ]
        )
        shown = capsys.readouterr().out
        assert rc == 0, shown
        for target in (second, embedder):
            assert target["target_path"] in shown
            assert target["sha256"] in shown
            assert f"length={target['length']}" in shown
        assert "name=embedder" in shown
        assert "2 new target(s), 1 published target(s) kept unchanged" in shown
        assert "Signed and published targets version 3" in shown

        client = updater(cp, base, tmp_path)
        client.refresh()
        for artifact, data in ((first, first_data), (second, second_data)):
            info = client.get_targetinfo(artifact["target_path"])
            assert info is not None
            assert info.hashes == {"sha256": sha256_hex(data)}
            assert Path(client.download_target(info)).read_bytes() == data
        assert client.get_targetinfo(embedder["target_path"]) is not None

    for release in waiting:
        assert release_state(cp, release["id"]) == "published"
    device = cp.enroll()
    assert cp.assign(device.id, waiting[1]["id"])["release_id"] == waiting[1]["id"]
    log = cp.audit()
    offline = [e for e in log if e["action"] == "targets.signed_offline"]
    assert len(offline) == 1
    assert offline[0]["details"]["targets_version"] == 3
    assert sorted(offline[0]["details"]["targets_added"]) == sorted(
        [second["target_path"], embedder["target_path"]]
    )
    signed_releases = offline[0]["details"]["releases"]
    assert sorted(signed_releases) == sorted(r["id"] for r in waiting)
    published = [
        e for e in log if e["action"] == "release.publish" and e["target"] in signed_releases
    ]
    assert {e["details"]["signed_with"] for e in published} == {"offline targets key"}
    assert "targets.signing_requested" in [e["action"] for e in log]


def test_declining_the_confirmation_signs_nothing(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    key_path = take_targets_key_offline(cp, tmp_path)
    release = cp.publish([cp.upload(small_gguf(tmp_path))["id"]])
    questions: list[str] = []

    def decline(question: str) -> bool:
        questions.append(question)
        return False

    with serving(cp.app) as base:
        outcome = sign_targets(
            server=base,
            token=token_file(cp, tmp_path).read_text().strip(),
            key_path=key_path,
            confirm=decline,
            out=io.StringIO(),
        )
    assert outcome.targets_version is None
    assert questions and "Sign targets version 2" in questions[0]
    assert release_state(cp, release["id"]) == "pending-signature"
    assert cp.client.get("/repo/metadata/2.targets.json").status_code == 404


def test_targets_signed_by_another_key_are_refused(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    take_targets_key_offline(cp, tmp_path)
    release = cp.publish([cp.upload(small_gguf(tmp_path))["id"]])
    r = put_targets(cp, signed_upload(pending(cp)["metadata"], generate_key_pair()))
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "targets_signature_rejected"
    assert "not signed by the targets key that root trusts" in r.json()["error"]["message"]
    assert release_state(cp, release["id"]) == "pending-signature"
    assert cp.client.get("/repo/metadata/2.targets.json").status_code == 404
    rejected = [e for e in cp.audit() if e["action"] == "targets.signature_rejected"]
    assert rejected[0]["details"]["reason"] == "targets_signature_rejected"


def test_the_cli_refuses_a_key_that_did_not_sign_the_repository(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    take_targets_key_offline(cp, tmp_path)
    cp.publish([cp.upload(small_gguf(tmp_path))["id"]])
    wrong = tmp_path / "wrong.key"
    write_private_key(generate_key_pair(), wrong)
    with serving(cp.app) as base, pytest.raises(SigningAbortedError, match="not signed by"):
        sign_targets(
            server=base,
            token=token_file(cp, tmp_path).read_text().strip(),
            key_path=wrong,
            confirm=None,
            out=io.StringIO(),
        )
    assert "targets.signed_offline" not in actions(cp)


def test_metadata_altered_after_signing_is_refused(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    key = load_private_key(take_targets_key_offline(cp, tmp_path))
    artifact = cp.upload(small_gguf(tmp_path))
    cp.publish([artifact["id"]])
    forged = signed_upload(pending(cp)["metadata"], key).replace(
        artifact["sha256"].encode(), b"f" * 64
    )
    r = put_targets(cp, forged)
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "targets_signature_rejected"
    garbage = put_targets(cp, b"{not json")
    assert garbage.status_code == 422
    assert "not TUF targets metadata" in garbage.json()["error"]["message"]
    assert cp.client.get("/repo/metadata/2.targets.json").status_code == 404


def test_signed_metadata_that_drops_a_published_target_is_refused(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    kept = cp.upload(small_gguf(tmp_path, seed=1))
    cp.publish([kept["id"]], version="1")
    key = load_private_key(take_targets_key_offline(cp, tmp_path))
    release = cp.publish([cp.upload(small_gguf(tmp_path, seed=2))["id"]], version="2")
    proposal = pending(cp)["metadata"]
    del proposal["signed"]["targets"][kept["target_path"]]
    r = put_targets(cp, signed_upload(proposal, key))
    assert r.status_code == 422
    assert "drops published targets" in r.json()["error"]["message"]
    assert kept["target_path"] in r.json()["error"]["message"]
    assert release_state(cp, release["id"]) == "pending-signature"
    assert cp.client.get("/repo/metadata/3.targets.json").status_code == 404


def test_signed_metadata_that_changes_a_pending_target_is_refused(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    key = load_private_key(take_targets_key_offline(cp, tmp_path))
    artifact = cp.upload(small_gguf(tmp_path))
    cp.publish([artifact["id"]])
    proposal = pending(cp)["metadata"]
    proposal["signed"]["targets"][artifact["target_path"]]["length"] += 1
    r = put_targets(cp, signed_upload(proposal, key))
    assert r.status_code == 422
    assert "changes the hashes, length or custom data" in r.json()["error"]["message"]


def test_expired_signed_metadata_is_refused(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    key = load_private_key(take_targets_key_offline(cp, tmp_path))
    cp.publish([cp.upload(small_gguf(tmp_path))["id"]])
    proposal = pending(cp)["metadata"]
    proposal["signed"]["expires"] = "2020-01-01T00:00:00Z"
    r = put_targets(cp, signed_upload(proposal, key))
    assert r.status_code == 422
    assert "expired" in r.json()["error"]["message"]


def test_a_replayed_older_targets_version_is_refused(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    key = load_private_key(take_targets_key_offline(cp, tmp_path))
    cp.publish([cp.upload(small_gguf(tmp_path, seed=1))["id"]], version="1")
    version_2 = signed_upload(pending(cp)["metadata"], key)
    accepted = put_targets(cp, version_2)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["targets_version"] == 2
    later = cp.publish([cp.upload(small_gguf(tmp_path, seed=2))["id"]], version="2")
    replay = put_targets(cp, version_2)
    assert replay.status_code == 409
    assert replay.json()["error"]["type"] == "targets_version_conflict"
    assert "accepts only version 3" in replay.json()["error"]["message"]
    assert release_state(cp, later["id"]) == "pending-signature"
    timestamp = cp.client.get("/repo/metadata/timestamp.json").json()["signed"]
    assert timestamp["meta"]["snapshot.json"]["version"] == 2
    rejected = [e for e in cp.audit() if e["action"] == "targets.signature_rejected"]
    assert rejected[0]["details"]["reason"] == "targets_version_conflict"


def test_a_release_created_after_fetching_must_be_signed_too(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    key = load_private_key(take_targets_key_offline(cp, tmp_path))
    cp.publish([cp.upload(small_gguf(tmp_path, seed=1))["id"]], version="1")
    stale = signed_upload(pending(cp)["metadata"], key)
    cp.publish([cp.upload(small_gguf(tmp_path, seed=2))["id"]], version="2")
    r = put_targets(cp, stale)
    assert r.status_code == 409
    assert "misses pending targets" in r.json()["error"]["message"]


def test_nothing_to_sign_and_permissions(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    r = cp.client.get("/api/v1/repository/pending-targets", headers=cp.auth("release-manager"))
    assert r.status_code == 409
    assert r.json()["error"]["type"] == "nothing_to_sign"
    for role in ("operator", "viewer"):
        denied = cp.client.get("/api/v1/repository/pending-targets", headers=cp.auth(role))
        assert denied.status_code == 403
        assert put_targets_as(cp, role).status_code == 403
    nothing = put_targets(cp, b"{}")
    assert nothing.status_code == 409
    assert nothing.json()["error"]["type"] == "nothing_to_sign"


def put_targets_as(cp: ControlPlaneUnderTest, role: str) -> Any:
    return cp.client.put("/api/v1/repository/targets", content=b"{}", headers=cp.auth(role))


def test_bringing_the_key_back_publishes_pending_releases_online(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    moved = take_targets_key_offline(cp, tmp_path)
    waiting = cp.publish([cp.upload(small_gguf(tmp_path, seed=1))["id"]], version="1")
    shutil.move(moved, cp.settings.resolved_offline_keys_dir / "targets.key")
    online = cp.publish([cp.upload(small_gguf(tmp_path, seed=2))["id"]], version="2")
    assert online["state"] == "published"
    assert online["targets_version"] == 2
    assert release_state(cp, waiting["id"]) == "published"
    targets = cp.client.get("/repo/metadata/2.targets.json").json()["signed"]["targets"]
    assert waiting["artifacts"][0]["target_path"] in targets
