"""``outpost-cp rotate-key``: devices that trusted root v1 follow to the new keys."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Root, Snapshot, Timestamp
from tuf.ngclient import Updater

from control_plane.cli import main
from control_plane.repository import sslib_key
from edge_agent.trust.director import DirectorTrust
from protocol.envelope import SignedEnvelope, verify_envelope
from protocol.errors import SignatureError
from protocol.keys import generate_key_pair, load_private_key, write_private_key
from protocol.messages import ASSIGNMENT_PAYLOAD_TYPE
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    small_gguf,
)
from tests.live_server import serving


def rotate(
    cp: ControlPlaneUnderTest, role: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any], str]:
    argv = ["rotate-key", "--data-dir", str(cp.settings.data_dir), "--role", role, *extra]
    if cp.settings.database_url:
        argv += ["--database-url", cp.settings.database_url]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def online_key(cp: ControlPlaneUnderTest, role: str) -> Path:
    return cp.settings.online_keys_dir / f"{role}.key"


def keyid_of(path: Path) -> str:
    return sslib_key(load_private_key(path).public).keyid


def root_v(cp: ControlPlaneUnderTest, version: int) -> Metadata[Root]:
    r = cp.client.get(f"/repo/metadata/{version}.root.json")
    assert r.status_code == 200, r.text
    return Metadata[Root].from_bytes(r.content)


def test_a_client_that_trusted_root_v1_follows_rotated_snapshot_and_timestamp_keys(
    cp: ControlPlaneUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata_dir = tmp_path / "client" / "metadata"
    metadata_dir.mkdir(parents=True)
    (tmp_path / "client" / "targets").mkdir()

    with serving(cp.app) as base:

        def client(bootstrap: bytes | None) -> Updater:
            return Updater(
                str(metadata_dir),
                f"{base}/repo/metadata/",
                str(tmp_path / "client" / "targets"),
                f"{base}/repo/targets/",
                bootstrap=bootstrap,
            )

        client(cp.root).refresh()  # trusts root v1, holds timestamp/snapshot v1
        old_ts = keyid_of(online_key(cp, "timestamp"))
        old_snap = keyid_of(online_key(cp, "snapshot"))

        code, ts_rotation, err = rotate(cp, "timestamp", capsys)
        assert code == 0, err
        code, snap_rotation, err = rotate(cp, "snapshot", capsys)
        assert code == 0, err
        assert (ts_rotation["root_version"], snap_rotation["root_version"]) == (2, 3)
        new_ts = keyid_of(online_key(cp, "timestamp"))
        new_snap = keyid_of(online_key(cp, "snapshot"))
        assert new_ts != old_ts and new_snap != old_snap

        # The running server re-read the rotated keys: publishing signs with them.
        data = small_gguf(tmp_path)
        artifact = cp.upload(data, name="after-rotation")
        cp.publish([artifact["id"]])

        updater = client(None)  # starts from the local, v1-trusting metadata
        updater.refresh()
        info = updater.get_targetinfo(artifact["target_path"])
        assert info is not None and info.length == len(data)

    root = Metadata[Root].from_file(str(metadata_dir / "root.json"))
    assert root.signed.version == 3
    assert root.signed.roles["timestamp"].keyids == [new_ts]
    assert root.signed.roles["snapshot"].keyids == [new_snap]
    assert old_ts not in root.signed.keys and old_snap not in root.signed.keys
    timestamp = Metadata[Timestamp].from_file(str(metadata_dir / "timestamp.json"))
    snapshot = Metadata[Snapshot].from_file(str(metadata_dir / "snapshot.json"))
    assert list(timestamp.signatures) == [new_ts]
    assert list(snapshot.signatures) == [new_snap]

    # Old keys are kept as retired 0600 files; new ones are 0600 too.
    for role, old in (("timestamp", old_ts), ("snapshot", old_snap)):
        (retired,) = cp.settings.online_keys_dir.glob(f"{role}.key.retired-*")
        assert keyid_of(retired) == old
        for path in (retired, online_key(cp, role)):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries = [e for e in cp.audit() if e["action"] == "key.rotate"]
    assert [(e["target"], e["details"]["root_version"]) for e in entries] == [
        ("snapshot", 3),
        ("timestamp", 2),
    ]


def test_director_rotation_resigns_assignments_that_verify_only_against_the_new_root(
    cp_any_db: ControlPlaneUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = cp_any_db
    device = cp.enroll()
    release = cp.publish([cp.upload(small_gguf(tmp_path))["id"]])
    cp.assign(device.id, release["id"])
    before = SignedEnvelope.model_validate_json(device.get_assignment().content)

    code, rotation, err = rotate(cp, "director", capsys)
    assert code == 0, err
    assert (rotation["root_version"], rotation["reissued_assignments"]) == (2, 1)

    root_v1, root_v2 = root_v(cp, 1), root_v(cp, 2)
    root_v1.verify_delegate("root", root_v2)  # the chain a device walks
    old_trust = DirectorTrust.from_root_signed(root_v1.signed.to_dict())
    new_trust = DirectorTrust.from_root_signed(root_v2.signed.to_dict())
    assert set(old_trust.keys).isdisjoint(new_trust.keys)

    after = SignedEnvelope.model_validate_json(device.get_assignment().content)
    payload = verify_envelope(
        after, payload_type=ASSIGNMENT_PAYLOAD_TYPE, trusted_keys=new_trust.keys
    )
    assert (payload["version"], payload["release_id"]) == (2, release["id"])
    verify_envelope(before, payload_type=ASSIGNMENT_PAYLOAD_TYPE, trusted_keys=old_trust.keys)
    with pytest.raises(SignatureError):
        verify_envelope(before, payload_type=ASSIGNMENT_PAYLOAD_TYPE, trusted_keys=new_trust.keys)
    with pytest.raises(SignatureError):
        verify_envelope(after, payload_type=ASSIGNMENT_PAYLOAD_TYPE, trusted_keys=old_trust.keys)

    # The running server signs new assignments with the new key, without a restart.
    newer = cp.assign(device.id, release["id"])
    assert newer["version"] == 3
    latest = SignedEnvelope.model_validate_json(device.get_assignment().content)
    verify_envelope(latest, payload_type=ASSIGNMENT_PAYLOAD_TYPE, trusted_keys=new_trust.keys)
    (entry,) = [e for e in cp.audit() if e["action"] == "key.rotate"]
    assert entry["target"] == "director"
    assert entry["details"]["reissued_assignments"] == 1


def test_a_wrong_root_key_changes_nothing(
    cp: ControlPlaneUnderTest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    impostor = tmp_path / "not-root.key"
    write_private_key(generate_key_pair(), impostor)
    director = online_key(cp, "director").read_bytes()
    code, _, err = rotate(cp, "director", capsys, "--root-key", str(impostor))
    assert code == 1
    assert "not the key the current root trusts" in err
    assert cp.client.get("/repo/metadata/2.root.json").status_code == 404
    assert online_key(cp, "director").read_bytes() == director
    assert sorted(p.name for p in cp.settings.online_keys_dir.iterdir()) == [
        "director.key",
        "snapshot.key",
        "timestamp.key",
    ]
    missing = rotate(cp, "director", capsys, "--root-key", str(tmp_path / "absent.key"))
    assert missing[0] == 1 and "--root-key" in missing[2]
    assert [e for e in cp.audit() if e["action"] == "key.rotate"] == []


def test_a_leftover_staged_key_blocks_a_second_rotation(
    cp: ControlPlaneUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    write_private_key(generate_key_pair(), cp.settings.online_keys_dir / "timestamp.key.new")
    code, _, err = rotate(cp, "timestamp", capsys)
    assert code == 1
    assert "did not finish" in err
    assert cp.client.get("/repo/metadata/2.root.json").status_code == 404


def test_the_server_refuses_to_sign_with_a_key_root_does_not_list(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    """Key files out of step with the database (a crash mid-rotation, a mixed restore)."""
    device = cp.enroll()
    release = cp.publish([cp.upload(small_gguf(tmp_path))["id"]])
    write_private_key(generate_key_pair(), online_key(cp, "director"))
    r = cp.client.post(
        f"/api/v1/devices/{device.id}/assignment",
        json={"release_id": release["id"]},
        headers=cp.auth("operator"),
    )
    assert r.status_code == 503
    assert "not the key the current root trusts" in r.json()["error"]["message"]
    assert device.get_assignment().status_code == 204
