"""One device's round with the control plane, as a sans-I/O conversation.

:func:`device_round` is a generator that yields the HTTP :class:`Call` objects a device
makes in one round (enroll if due, poll, report) and is sent back each :class:`Answer`;
it returns a :class:`RoundOutcome`. The in-process and the concurrent drivers send the
calls with their own clients and share every protocol decision made here.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from edge_agent.errors import BadUpdateError
from edge_agent.trust import DirectorTrust
from protocol import (
    EnrollRequest,
    EnrollResponse,
    InstallState,
    SignedEnvelope,
    paths,
    sign_device_request,
)
from simulator.device import PollOutcome, SimDevice
from simulator.errors import ServerError

ENROLLMENT_TOKENS = "/api/v1/enrollment-tokens"
ROOT_METADATA = f"{paths.REPO_METADATA}/root.json"
ENROLLMENT_TOKEN_LIFETIME_SECONDS = 3600


@dataclass(frozen=True)
class Call:
    """One HTTP request. ``kind`` names it in latency figures."""

    kind: str
    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    """The response to a :class:`Call`; ``error`` is set when no response came."""

    status_code: int
    content: bytes = b""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status_code < 300


@dataclass
class RoundOutcome:
    """What one device did in one round."""

    enrolled: bool = False
    polled: bool = False
    outcome: PollOutcome | None = None
    reports: list[InstallState] = field(default_factory=list)
    config: str | None = None  # what the config fetch meant (devices that sync config)
    config_reports: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


Exchange = Generator[Call, Answer, RoundOutcome]


def device_round(
    device: SimDevice,
    *,
    round_: int,
    now: datetime,
    director: DirectorTrust,
    operator_token: str | None,
) -> Exchange:
    """Enroll if due, finish a due install, poll once, deliver queued reports."""
    result = RoundOutcome()
    behaviour = device.behaviour
    if not device.enrolled:
        if not behaviour.enrolled_by(round_):
            return result
        error = yield from _enroll(device, operator_token)
        if error is not None:
            result.errors.append(error)
            return result
        result.enrolled = True
    device.advance(round_, now)
    if not behaviour.online(round_):
        return result
    answer = yield _signed(device, "poll", "GET", paths.DEVICE_ASSIGNMENT, b"", now)
    if answer.error is not None or answer.status_code not in (200, 204):
        result.errors.append(_describe(device, "poll", answer))
        return result
    result.polled = True
    try:
        envelope = parse_assignment(answer)
    except BadUpdateError as e:
        result.outcome = device.refuse("EnvelopeFormatError", str(e), now)
    else:
        result.outcome = device.observe(envelope, director=director, round_=round_, now=now)
    while device.outbox:
        report = device.outbox[0]
        body = report.model_dump_json().encode()
        answer = yield _signed(device, "report", "POST", paths.DEVICE_STATUS, body, now)
        if not answer.ok:
            result.errors.append(_describe(device, "report", answer))
            break  # it stays queued for the next round
        device.outbox.pop(0)
        result.reports.append(report.state)
    if behaviour.syncs_config:
        yield from _config_round(device, result, director, now)
    return result


def _config_round(
    device: SimDevice, result: RoundOutcome, director: DirectorTrust, now: datetime
) -> Generator[Call, Answer, None]:
    """Fetch the signed config, act on it, deliver the config reports it caused."""
    answer = yield _signed(device, "config", "GET", paths.DEVICE_CONFIG, b"", now)
    if answer.error is not None or answer.status_code not in (200, 204):
        result.errors.append(_describe(device, "config", answer))
        return
    envelope = None
    if answer.status_code == 200 and answer.content:
        try:
            envelope = SignedEnvelope.model_validate_json(answer.content)
        except ValidationError:
            result.config = "rejected"
            return
    result.config = device.observe_config(envelope, director=director, now=now)
    while device.config_outbox:
        report = device.config_outbox[0]
        body = report.model_dump_json().encode()
        answer = yield _signed(
            device, "config_report", "POST", paths.DEVICE_CONFIG_STATUS, body, now
        )
        if not answer.ok:
            refused = answer.error is None and 400 <= answer.status_code < 500
            if refused and answer.status_code not in (401, 429):  # for good: drop it
                device.config_outbox.pop(0)
            result.errors.append(_describe(device, "config_report", answer))
            break
        device.config_outbox.pop(0)
        result.config_reports.append(report.state)


def enrollment(device: SimDevice, *, operator_token: str | None) -> Exchange:
    """Enroll ``device`` now (an enrollment token, then the enrollment), whatever its round."""
    result = RoundOutcome()
    if device.enrolled:
        return result
    error = yield from _enroll(device, operator_token)
    if error is None:
        result.enrolled = True
    else:
        result.errors.append(error)
    return result


def parse_assignment(answer: Answer) -> SignedEnvelope | None:
    """The envelope of a poll's answer (None for 204); unreadable ones are a bad update."""
    if answer.status_code == 204 or not answer.content:
        return None
    try:
        return SignedEnvelope.model_validate_json(answer.content)
    except ValidationError as e:
        raise BadUpdateError(
            "the control plane's assignment is not a signed envelope; refused"
        ) from e


def root_call() -> Call:
    return Call("root", "GET", ROOT_METADATA)


def director_from_root(root: bytes) -> DirectorTrust:
    """The director keys named by a TUF root file (the whole file, with its "signed" part).

    The simulator trusts the root it is given (pinned) or the first one it fetches (TOFU).
    """
    try:
        document = json.loads(root)
        signed = document["signed"]
        if not isinstance(signed, dict):
            raise TypeError("'signed' is not an object")
        return DirectorTrust.from_root_signed(signed)
    except (ValueError, KeyError, TypeError) as e:
        raise ServerError(f"the TUF root is not a root metadata document: {e}") from e
    except BadUpdateError as e:
        raise ServerError(f"the TUF root names no usable director: {e}") from e


def enrollment_token_call(operator_token: str, tags: tuple[str, ...]) -> Call:
    body = json.dumps(
        {"tags": list(tags), "expires_in_seconds": ENROLLMENT_TOKEN_LIFETIME_SECONDS}
    ).encode()
    return Call(
        "enrollment_token",
        "POST",
        ENROLLMENT_TOKENS,
        body,
        {"Authorization": f"Bearer {operator_token}", "Content-Type": "application/json"},
    )


def _enroll(device: SimDevice, operator_token: str | None) -> Generator[Call, Answer, str | None]:
    if operator_token is None:
        return f"{device.profile.name} enroll: no operator token to issue an enrollment token"
    answer = yield enrollment_token_call(operator_token, device.profile.tags)
    token = _json_field(answer, "token")
    if token is None:
        return _describe(device, "enrollment_token", answer)
    request = EnrollRequest(
        token=token,
        device_public_key=device.key.public_hex,
        name=device.profile.name,
        hardware=device.profile.hardware,
        tags=list(device.profile.tags),
    )
    answer = yield Call(
        "enroll",
        "POST",
        paths.ENROLL,
        request.model_dump_json().encode(),
        {"Content-Type": "application/json"},
    )
    if answer.status_code != 201 or answer.error is not None:
        return _describe(device, "enroll", answer)
    try:
        device.device_id = EnrollResponse.model_validate_json(answer.content).device_id
    except ValidationError:
        return f"{device.profile.name} enroll: the enrollment answer is malformed"
    return None


def _signed(
    device: SimDevice, kind: str, method: str, path: str, body: bytes, now: datetime
) -> Call:
    if device.device_id is None:
        raise ValueError(f"device {device.index} has not enrolled yet")
    authorization = sign_device_request(
        device.key, device.device_id, method, path, body, now.timestamp()
    )
    headers = {"Authorization": authorization}
    if body:
        headers["Content-Type"] = "application/json"
    return Call(kind, method, path, body, headers)


def _json_field(answer: Answer, name: str) -> str | None:
    if not answer.ok:
        return None
    try:
        value: Any = json.loads(answer.content)
    except ValueError:
        return None
    field_value = value.get(name) if isinstance(value, dict) else None
    return field_value if isinstance(field_value, str) else None


def _describe(device: SimDevice, kind: str, answer: Answer) -> str:
    if answer.error is not None:
        return f"{device.profile.name} {kind}: {answer.error}"
    text = answer.content[:200].decode("utf-8", "replace")
    return f"{device.profile.name} {kind}: HTTP {answer.status_code}: {text}"
