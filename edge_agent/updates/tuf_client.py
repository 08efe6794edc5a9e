"""Adapter over python-tuf's ngclient: verified image-repository metadata, agent errors."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root
from tuf.ngclient import FetcherInterface, Updater

from edge_agent.errors import (
    BadUpdateError,
    ExpiredUpdateError,
    RollbackAttackError,
    TamperedArtifactError,
    TransportError,
    UntrustedSignatureError,
)
from edge_agent.trust import DirectorTrust, SignedTarget
from edge_agent.uplink.client import content_encoding

_CHUNK = 64 * 1024


class HttpxFetcher(FetcherInterface):
    """ngclient's network edge over a shared ``httpx.Client`` (ngclient bounds lengths)."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise tuf_errors.DownloadHTTPError(
                        f"GET {url} answered {response.status_code}", response.status_code
                    )
                encoding = content_encoding(response)
                if encoding is not None:
                    raise tuf_errors.DownloadError(
                        f"GET {url} answered a {encoding!r}-encoded body (identity only)"
                    )
                yield from response.iter_bytes(_CHUNK)
        except httpx.HTTPError as e:
            raise tuf_errors.DownloadError(f"GET {url} failed: {type(e).__name__}") from e


@contextmanager
def _agent_errors() -> Iterator[None]:
    """Re-raise python-tuf errors as the agent's error classes."""
    try:
        yield
    except tuf_errors.ExpiredMetadataError as e:
        raise ExpiredUpdateError(
            f"image-repository metadata has expired ({e}): no new install until the control"
            " plane re-signs it; the device keeps serving its current release"
        ) from e
    except tuf_errors.EqualVersionNumberError as e:
        raise BadUpdateError(f"image-repository metadata repeats a version: {e}") from e
    except tuf_errors.BadVersionNumberError as e:
        raise RollbackAttackError(
            f"image-repository metadata went back in version ({e}); refusing it"
        ) from e
    except tuf_errors.UnsignedMetadataError as e:
        raise UntrustedSignatureError(
            f"image-repository metadata is not signed by the keys the trusted root names: {e}"
        ) from e
    except tuf_errors.LengthOrHashMismatchError as e:
        raise TamperedArtifactError(
            f"image-repository metadata does not match its signed hash or length: {e}"
        ) from e
    except tuf_errors.DownloadLengthMismatchError as e:
        raise TamperedArtifactError(f"image-repository metadata is too long: {e}") from e
    except tuf_errors.RepositoryError as e:
        raise BadUpdateError(f"image-repository metadata was refused: {e}") from e
    except tuf_errors.DownloadError as e:
        raise TransportError(
            f"could not download image-repository metadata ({e}); will retry"
        ) from e


class VerifiedImageMetadata:
    """Top-level metadata that passed every TUF check in this refresh."""

    def __init__(self, updater: Updater, director: DirectorTrust) -> None:
        self._updater = updater
        self.director = director

    def signed_targets(self, paths: Iterable[str]) -> dict[str, SignedTarget | None]:
        """What the verified targets metadata says of each path (None: not signed)."""
        found: dict[str, SignedTarget | None] = {}
        with _agent_errors():
            for path in paths:
                info = self._updater.get_targetinfo(path)
                if info is None or "sha256" not in info.hashes:
                    found[path] = None
                    continue
                custom = info.unrecognized_fields.get("custom")
                found[path] = SignedTarget(
                    path=path,
                    sha256=info.hashes["sha256"],
                    length=info.length,
                    custom=custom if isinstance(custom, dict) else {},
                )
        return found


class ImageMetadataClient:
    """Refreshes TUF metadata from the image repository into ``metadata_dir``.

    Trust starts at ``trusted_root`` (the root pinned at enrollment); root rotations,
    and the latest timestamp/snapshot/targets versions, persist in ``metadata_dir``.
    """

    def __init__(
        self, *, metadata_dir: Path, metadata_url: str, trusted_root: bytes, http: httpx.Client
    ) -> None:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        self._dir = metadata_dir
        self._url = metadata_url.rstrip("/") + "/"
        self._root = trusted_root
        self._fetcher = HttpxFetcher(http)

    def refresh(self) -> VerifiedImageMetadata:
        """Run the TUF client workflow once (root, timestamp, snapshot, targets)."""
        with _agent_errors():
            updater = Updater(
                str(self._dir), self._url, fetcher=self._fetcher, bootstrap=self._root
            )
            updater.refresh()
            root = Metadata[Root].from_bytes((self._dir / "root.json").read_bytes())
        director = DirectorTrust.from_root_signed(root.signed.unrecognized_fields)
        return VerifiedImageMetadata(updater, director)
