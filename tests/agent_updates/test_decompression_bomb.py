"""A server that gzip-encodes a response must not make the agent inflate it in memory.

The signed length bounds the bytes the agent keeps, but httpx inflates a whole network
chunk before the downloader sees it: a 64 KiB gzip chunk of zeros is 64 MiB in memory,
and nested encodings multiply that. The agent reads bodies as the bytes on the wire.
"""

from __future__ import annotations

import gzip
import hashlib
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions as tuf_errors

from edge_agent.errors import BadUpdateError, TamperedArtifactError, TransportError
from edge_agent.store import ReleaseStore
from edge_agent.updates import ArtifactDownloader
from edge_agent.updates.tuf_client import HttpxFetcher
from edge_agent.uplink import new_http_client
from edge_agent.uplink.client import fetch_root_metadata
from protocol import TargetRef

INFLATED = 64 << 20
MEMORY_BOUND = 16 << 20


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip.compress(bytes(INFLATED), compresslevel=9)


def bomb_server(bomb: bytes) -> httpx.MockTransport:
    def chunks() -> Iterator[bytes]:  # streamed, so that only the client could inflate it
        for i in range(0, len(bomb), 64 * 1024):
            yield bomb[i : i + 64 * 1024]

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks(), headers={"Content-Encoding": "gzip"})

    return httpx.MockTransport(handle)


def peak_bytes_of(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_gzip_bomb_artifact_is_not_inflated(tmp_path: Path, bomb: bytes) -> None:
    store = ReleaseStore.open(tmp_path / "state")
    signed = b"m" * (1 << 20)
    sha = hashlib.sha256(signed).hexdigest()
    target = TargetRef(
        name="m", path=f"{sha}/m.gguf", sha256=sha, length=len(signed), kind="llm", format="gguf"
    )
    http = new_http_client("http://cp.test", transport=bomb_server(bomb))
    downloader = ArtifactDownloader(http, targets_url="http://cp.test/targets", store=store)

    def fetch() -> None:
        with pytest.raises((TamperedArtifactError, TransportError)):
            downloader.fetch(target)

    assert peak_bytes_of(fetch) < MEMORY_BOUND
    assert not store.has_blob(sha, len(signed))
    store.close()


def test_gzip_bomb_message_is_not_inflated(bomb: bytes) -> None:
    http = new_http_client("http://cp.test", transport=bomb_server(bomb))

    def fetch() -> None:
        with pytest.raises(BadUpdateError, match="encoded"):
            fetch_root_metadata(http)

    assert peak_bytes_of(fetch) < MEMORY_BOUND


def test_gzip_bomb_metadata_is_not_inflated(bomb: bytes) -> None:
    fetcher = HttpxFetcher(new_http_client("http://cp.test", transport=bomb_server(bomb)))

    def fetch() -> None:
        with pytest.raises(tuf_errors.DownloadError):
            fetcher.download_bytes("http://cp.test/metadata/timestamp.json", 16_384)

    assert peak_bytes_of(fetch) < MEMORY_BOUND
