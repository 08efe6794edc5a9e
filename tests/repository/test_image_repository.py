"""The image repository's metadata verifies with python-tuf's own client."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.exceptions import ExpiredMetadataError
from tuf.ngclient import FetcherInterface, Updater

from control_plane.repository import ImageRepository, RepositoryLifetimes, RoleKeys, tuf_signer
from protocol import DIRECTOR_ROOT_FIELD, Ed25519KeyPair, generate_key_pair

BASE = "http://repo.invalid/metadata/"


class MemoryFetcher(FetcherInterface):
    """Serves metadata files from a dict: the 'network' of these tests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def _fetch(self, url: str) -> Iterator[bytes]:
        from tuf.api.exceptions import DownloadHTTPError

        name = url.removeprefix(BASE)
        if name not in self.files:
            raise DownloadHTTPError(f"404 {name}", 404)
        yield self.files[name]


ROLES = ("root", "targets", "snapshot", "timestamp", "director")


def _new_repo(
    now: datetime, lifetimes: RepositoryLifetimes | None = None
) -> tuple[ImageRepository, dict[str, bytes], dict[str, Ed25519KeyPair]]:
    keys = {r: generate_key_pair() for r in ROLES}
    role_keys = RoleKeys(**{r: k.public for r, k in keys.items()})
    repo, files = ImageRepository.create(
        role_keys,
        root_signer=tuf_signer(keys["root"]),
        targets_signer=tuf_signer(keys["targets"]),
        snapshot_signer=tuf_signer(keys["snapshot"]),
        timestamp_signer=tuf_signer(keys["timestamp"]),
        now=now,
        lifetimes=lifetimes,
    )
    return repo, files, keys


def _updater(tmp_path: Path, files: dict[str, bytes]) -> Updater:
    return Updater(
        str(tmp_path),
        BASE,
        fetcher=MemoryFetcher(files),
        bootstrap=files["1.root.json"],
    )


def test_published_target_verifies_with_ngclient(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    repo, files, keys = _new_repo(now)
    data = b"GGUF fake model bytes"
    sha = hashlib.sha256(data).hexdigest()
    path = f"{sha}/model.gguf"
    files.update(
        repo.add_targets(
            [repo.target_file(path, sha, len(data), {"kind": "llm", "format": "gguf"})],
            targets_signer=tuf_signer(keys["targets"]),
            snapshot_signer=tuf_signer(keys["snapshot"]),
            timestamp_signer=tuf_signer(keys["timestamp"]),
            now=now,
        )
    )
    updater = _updater(tmp_path, files)
    updater.refresh()
    info = updater.get_targetinfo(path)
    assert info is not None
    assert info.length == len(data)
    assert info.hashes["sha256"] == sha
    assert info.unrecognized_fields["custom"]["kind"] == "llm"
    assert updater.get_targetinfo(f"{'0' * 64}/other.gguf") is None


def test_root_pins_the_director_key() -> None:
    repo, _, keys = _new_repo(datetime.now(UTC))
    field = repo.root.signed.unrecognized_fields[DIRECTOR_ROOT_FIELD]
    (entry,) = field["keys"].values()
    assert entry["public"] == keys["director"].public_hex
    assert repo.director_keys() == field


def test_expired_timestamp_is_refused_by_the_client(tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=3)
    _, files, _ = _new_repo(past, RepositoryLifetimes(timestamp=timedelta(days=1)))
    with pytest.raises(ExpiredMetadataError):
        _updater(tmp_path, files).refresh()


def test_reloaded_repository_keeps_versions() -> None:
    now = datetime.now(UTC)
    repo, files, keys = _new_repo(now)
    files.update(repo.refresh_timestamp(tuf_signer(keys["timestamp"]), now))
    again = ImageRepository.from_files(
        root=files["1.root.json"],
        targets=files["1.targets.json"],
        snapshot=files["1.snapshot.json"],
        timestamp=files["timestamp.json"],
    )
    assert again.timestamp.signed.version == 2
