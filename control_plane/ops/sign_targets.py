"""The release manager's side of offline signing (``outpost-cp sign-targets``).

Runs on the machine that holds ``targets.key``; needs no database, only the control
plane's HTTP API and a release-manager API token. It fetches the proposed targets
metadata, checks it against the previous version (which must carry this key's
signature, and whose targets must all be kept unchanged), shows what is new, asks,
signs locally and uploads the signature. The key never leaves this machine.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.api.serialization import DeserializationError

from control_plane.errors import ControlPlaneError
from control_plane.repository import sslib_key, tuf_signer
from control_plane.repository.offline_targets import serialize, signed_by
from protocol.keys import load_private_key

Confirm = Callable[[str], bool]


class SigningAbortedError(ControlPlaneError):
    """Nothing was signed or uploaded: the server refused, or the proposal looked wrong."""

    error_type = "signing_aborted"


@dataclass(frozen=True)
class SigningOutcome:
    """What ``sign-targets`` did: ``targets_version`` is None when nothing was uploaded."""

    targets_version: int | None
    published: list[str]


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['type']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


def describe_target(target: TargetFile, *, new: bool) -> str:
    custom = target.unrecognized_fields.get("custom", {})
    name = custom.get("name", "?") if isinstance(custom, dict) else "?"
    mark = "+ new " if new else "  kept"
    return (
        f"{mark} {target.path}\n"
        f"       name={name} sha256={target.hashes.get('sha256', '?')} length={target.length}"
    )


def check_proposal(proposed: Metadata[Targets], previous: Metadata[Targets]) -> list[TargetFile]:
    """The targets ``proposed`` adds to ``previous``; raise if it drops or changes any."""
    if proposed.signed.version != previous.signed.version + 1:
        raise SigningAbortedError(
            f"the server proposes targets version {proposed.signed.version} after version"
            f" {previous.signed.version}; refusing to sign"
        )
    listed = proposed.signed.targets
    dropped = sorted(p for p in previous.signed.targets if p not in listed)
    kept = previous.signed.targets.items()
    changed = sorted(p for p, t in kept if p in listed and listed[p] != t)
    if dropped or changed:
        raise SigningAbortedError(
            "the server's proposal drops or changes published targets"
            f" (dropped: {', '.join(dropped) or 'none'}; changed: {', '.join(changed) or 'none'});"
            " refusing to sign. Investigate the server before signing anything"
        )
    return [t for p, t in sorted(listed.items()) if p not in previous.signed.targets]


def sign_targets(
    *,
    server: str,
    token: str,
    key_path: Path,
    confirm: Confirm | None,
    out: TextIO,
    transport: httpx.BaseTransport | None = None,
) -> SigningOutcome:
    """Fetch, check, show, confirm (``confirm=None`` means yes), sign and upload."""
    pair = load_private_key(key_path)
    key = sslib_key(pair.public)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(
        base_url=server.rstrip("/"), headers=headers, timeout=60, transport=transport
    ) as http:
        response = http.get("/api/v1/repository/pending-targets")
        if response.status_code == 409 and "nothing_to_sign" in response.text:
            print("No release awaits the targets signature; nothing to do.", file=out)
            return SigningOutcome(targets_version=None, published=[])
        if response.status_code != 200:
            raise SigningAbortedError(
                f"fetching pending targets failed: {_error_message(response)}"
            )
        body: dict[str, Any] = response.json()
        previous_file = http.get(f"/repo/metadata/{int(body['version']) - 1}.targets.json")
        if previous_file.status_code != 200:
            raise SigningAbortedError(
                f"fetching the current targets metadata failed: {_error_message(previous_file)}"
            )
        try:
            proposed = Metadata[Targets].from_dict(copy.deepcopy(body["metadata"]))
            previous = Metadata[Targets].from_bytes(previous_file.content)
        except (DeserializationError, ValueError, KeyError, TypeError) as e:
            raise SigningAbortedError(f"the server sent malformed targets metadata: {e}") from e
        if proposed.signed.version != body["version"]:
            raise SigningAbortedError("the server's proposal contradicts its stated version")
        if not signed_by(previous, key):
            raise SigningAbortedError(
                f"the current targets metadata (version {previous.signed.version}) is not"
                f" signed by the key in {key_path} (key id {key.keyid}): wrong key, or the"
                " repository was altered. Nothing was signed"
            )
        added = check_proposal(proposed, previous)
        releases = ", ".join(f"{r['name']}@{r['version']}" for r in body.get("releases", []))
        print(
            f"Targets version {proposed.signed.version} (expires"
            f" {proposed.signed.expires.isoformat()}) publishes: {releases or 'none'}",
            file=out,
        )
        print(
            f"{len(added)} new target(s), {len(previous.signed.targets)} published target(s)"
            " kept unchanged:",
            file=out,
        )
        for target in added:
            print(describe_target(target, new=True), file=out)
        for _path, target in sorted(previous.signed.targets.items()):
            print(describe_target(target, new=False), file=out)
        if confirm is not None and not confirm(
            f"Sign targets version {proposed.signed.version} with key {key.keyid[:16]}?"
        ):
            print("Not signed; nothing was uploaded.", file=out)
            return SigningOutcome(targets_version=None, published=[])
        proposed.sign(tuf_signer(pair))
        uploaded = http.put(
            "/api/v1/repository/targets",
            content=serialize(proposed),
            headers={"Content-Type": "application/json"},
        )
        if uploaded.status_code != 200:
            raise SigningAbortedError(
                f"the server refused the signature: {_error_message(uploaded)}"
            )
        result: dict[str, Any] = uploaded.json()
    published = [f"{r['name']}@{r['version']}" for r in result["published"]]
    print(
        f"Signed and published targets version {result['targets_version']}: {', '.join(published)}",
        file=out,
    )
    return SigningOutcome(targets_version=int(result["targets_version"]), published=published)
