"""The image repository over real HTTP: python-tuf's client verifies what we publish."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from tuf.api.exceptions import ExpiredMetadataError, RepositoryError
from tuf.ngclient import Updater

from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    make_control_plane,
    sha256_hex,
    small_gguf,
)
from tests.live_server import serving


def updater(cp: ControlPlaneUnderTest, base: str, tmp_path: Path, name: str = "client") -> Updater:
    metadata_dir = tmp_path / name / "metadata"
    metadata_dir.mkdir(parents=True)
    (tmp_path / name / "targets").mkdir()
    return Updater(
        str(metadata_dir),
        f"{base}/repo/metadata/",
        str(tmp_path / name / "targets"),
        f"{base}/repo/targets/",
        bootstrap=cp.root,
    )


def test_published_release_verifies_with_ngclient(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    data = small_gguf(tmp_path)
    artifact = cp.upload(data, name="tiny-chat", runtime="llama.cpp")
    cp.publish([artifact["id"]])
    with serving(cp.app) as base:
        client = updater(cp, base, tmp_path)
        client.refresh()
        info = client.get_targetinfo(artifact["target_path"])
        assert info is not None
        assert info.length == len(data)
        assert info.hashes == {"sha256": sha256_hex(data)}
        custom = info.unrecognized_fields["custom"]
        assert (custom["name"], custom["kind"], custom["format"]) == ("tiny-chat", "llm", "gguf")
        assert custom["runtime"] == "llama.cpp"
        downloaded = client.download_target(info)
        assert Path(downloaded).read_bytes() == data
        assert client.get_targetinfo(f"{'0' * 64}/other.gguf") is None


def test_timestamp_is_resigned_past_half_its_lifetime(tmp_path: Path) -> None:
    cp = make_control_plane(tmp_path, timestamp_lifetime_seconds=600)
    with cp.client:
        first = cp.client.get("/repo/metadata/timestamp.json").json()["signed"]
        cp.clock.advance(seconds=200)
        same = cp.client.get("/repo/metadata/timestamp.json").json()["signed"]
        cp.clock.advance(seconds=200)  # 400 s of 600: past half
        fresh = cp.client.get("/repo/metadata/timestamp.json").json()["signed"]
    assert same["version"] == first["version"] == 1
    assert fresh["version"] == 2
    assert fresh["expires"] > first["expires"]


def test_snapshot_is_resigned_past_half_its_lifetime(tmp_path: Path) -> None:
    cp = make_control_plane(
        tmp_path, snapshot_lifetime_seconds=1000, timestamp_lifetime_seconds=100_000
    )
    with cp.client:
        cp.clock.advance(seconds=600)
        timestamp = cp.client.get("/repo/metadata/timestamp.json").json()["signed"]
        assert timestamp["meta"]["snapshot.json"]["version"] == 2
        assert cp.client.get("/repo/metadata/2.snapshot.json").status_code == 200


def test_an_online_client_never_sees_an_expired_timestamp(tmp_path: Path) -> None:
    """Initialized 20 s ago with a 16 s timestamp: the stored file has expired by the
    client's real clock, yet the client verifies, because serving re-signs it."""
    cp = make_control_plane(
        tmp_path, start=datetime.now(UTC) - timedelta(seconds=20), timestamp_lifetime_seconds=16
    )
    with cp.client, serving(cp.app) as base:
        cp.clock.now = datetime.now(UTC)
        client = updater(cp, base, tmp_path)
        client.refresh()
        assert client.get_targetinfo(f"{'0' * 64}/x.gguf") is None


def test_client_refuses_an_expired_timestamp(tmp_path: Path) -> None:
    """The same repository, with the server's clock stuck in the past (it does not re-sign)."""
    cp = make_control_plane(
        tmp_path, start=datetime.now(UTC) - timedelta(seconds=20), timestamp_lifetime_seconds=16
    )
    with cp.client, serving(cp.app) as base, pytest.raises(ExpiredMetadataError):
        updater(cp, base, tmp_path).refresh()


def test_publishing_without_the_targets_key_waits_for_its_signature(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    """The offline flow itself is tested in test_offline_signing.py."""
    artifact = cp.upload(small_gguf(tmp_path))
    offline = cp.settings.resolved_offline_keys_dir / "targets.key"
    moved = tmp_path / "usb-stick-targets.key"
    shutil.move(offline, moved)
    r = cp.client.post(
        "/api/v1/releases",
        json={"name": "assistant", "version": "1", "artifacts": [artifact["id"]]},
        headers=cp.auth("release-manager"),
    )
    assert r.status_code == 201
    assert r.json()["state"] == "pending-signature"
    assert cp.client.get("/repo/metadata/2.targets.json").status_code == 404
    shutil.move(moved, offline)  # the release manager brings the key back for a publish
    assert cp.publish([artifact["id"]], version="2")["targets_version"] == 2
    release = cp.client.get(f"/api/v1/releases/{r.json()['id']}", headers=cp.auth()).json()
    assert (release["state"], release["targets_version"]) == ("published", 2)


def test_release_names_and_artifacts_are_checked(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    artifact = cp.upload(small_gguf(tmp_path))
    cp.publish([artifact["id"]], version="1")
    headers = cp.auth("release-manager")
    again = cp.client.post(
        "/api/v1/releases",
        json={"name": "assistant", "version": "1", "artifacts": [artifact["id"]]},
        headers=headers,
    )
    assert again.status_code == 409
    assert "already exists" in again.json()["error"]["message"]
    unknown = cp.client.post(
        "/api/v1/releases",
        json={"name": "assistant", "version": "2", "artifacts": ["art_missing"]},
        headers=headers,
    )
    assert unknown.status_code == 422
    assert "art_missing" in unknown.json()["error"]["message"]


def test_republishing_a_target_does_not_sign_a_new_targets_version(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    artifact = cp.upload(small_gguf(tmp_path))
    first = cp.publish([artifact["id"]], version="1")
    second = cp.publish([artifact["id"]], version="2", temperature=0.1)
    assert first["targets_version"] == second["targets_version"] == 2


def test_metadata_files_and_bad_names(cp: ControlPlaneUnderTest) -> None:
    root = cp.client.get("/repo/metadata/1.root.json")
    assert root.status_code == 200
    assert root.content == cp.root
    assert json.loads(cp.client.get("/repo/metadata/root.json").content) == json.loads(cp.root)
    assert cp.client.get("/repo/metadata/2.root.json").status_code == 404
    assert cp.client.get("/repo/metadata/..%2Fcontrol-plane.db").status_code == 404
    assert cp.client.get("/repo/metadata/1.root.json.bak").status_code == 404


def test_targets_support_range_and_head(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    data = small_gguf(tmp_path, values=2048)
    artifact = cp.upload(data)
    cp.publish([artifact["id"]])
    url = f"/repo/targets/{artifact['target_path']}"
    with serving(cp.app) as base, httpx.Client(base_url=base) as http:
        whole = http.get(url)
        assert (whole.status_code, whole.content) == (200, data)
        assert whole.headers["accept-ranges"] == "bytes"
        part = http.get(url, headers={"Range": "bytes=100-"})
        assert part.status_code == 206
        assert part.content == data[100:]
        assert part.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        middle = http.get(url, headers={"Range": "bytes=10-19"})
        assert (middle.status_code, middle.content) == (206, data[10:20])
        head = http.head(url)
        assert head.status_code == 200
        assert head.content == b""
        assert int(head.headers["content-length"]) == len(data)
        beyond = http.get(url, headers={"Range": f"bytes={len(data) + 10}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{len(data)}"


def test_unpublished_artifacts_are_not_served(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    artifact = cp.upload(small_gguf(tmp_path))
    r = cp.client.get(f"/repo/targets/{artifact['target_path']}")
    assert r.status_code == 404
    assert cp.client.get("/repo/targets/not-a-hash/x.gguf").status_code == 404


def test_a_tampered_metadata_file_is_refused_by_the_client(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    """Mirrors need no trust: a byte changed in the database breaks the signature."""
    from sqlalchemy import update

    from control_plane.storage.models import TufMetadataFile

    artifact = cp.upload(small_gguf(tmp_path))
    cp.publish([artifact["id"]])
    db = cp.app.state.control_plane.db
    with db.transaction() as session:
        row = session.query(TufMetadataFile).filter_by(file_name="2.targets.json").one()
        forged = row.content.replace(artifact["sha256"].encode(), b"f" * 64)
        session.execute(
            update(TufMetadataFile).where(TufMetadataFile.id == row.id).values(content=forged)
        )
    with serving(cp.app) as base:
        client = updater(cp, base, tmp_path)
        with pytest.raises(RepositoryError):
            client.refresh()


def test_health(cp: ControlPlaneUnderTest) -> None:
    r = cp.client.get("/healthz")
    assert r.json() == {"status": "ok", "protocol_version": 1}
