"""Dashboard sessions: a signed cookie naming an API token, and CSRF tokens (pure).

The cookie carries no secret: the API token's id, a random session id and the issue and
expiry times, signed with HMAC-SHA256 under the control plane's dashboard key. Every
request looks the token up again (see ``routes``), so revoking the API token ends its
dashboard sessions at once. The CSRF token of a session is derived from the key and the
session id, so nothing is stored per session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from control_plane.errors import AuthenticationError, NotInitializedError, PermissionDeniedError

SESSION_COOKIE = "outpost_dashboard"
LOGIN_COOKIE = "outpost_dashboard_login"
SESSION_LIFETIME = timedelta(hours=8)
LOGIN_FORM_LIFETIME = timedelta(minutes=30)
KEY_BYTES = 32
MAX_COOKIE_CHARS = 1024


@dataclass(frozen=True)
class DashboardSession:
    """Who signed in (an API token's id) and until when."""

    token_id: str
    session_id: str
    issued_at: datetime
    expires_at: datetime

    @classmethod
    def start(cls, token_id: str, now: datetime, session_id: str) -> DashboardSession:
        """A session from ``now`` for :data:`SESSION_LIFETIME`; ``session_id`` is random
        (:func:`fresh_id`)."""
        return cls(
            token_id=token_id,
            session_id=session_id,
            issued_at=now,
            expires_at=now + SESSION_LIFETIME,
        )


def fresh_id() -> str:
    """128 random bits, URL-safe: session ids and sign-in form nonces."""
    return secrets.token_urlsafe(16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Signs and opens session cookies and derives CSRF tokens under one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"the dashboard key must be at least {KEY_BYTES} bytes")
        self._key = key

    def _mac(self, purpose: str, message: bytes) -> bytes:
        return hmac.new(self._key, purpose.encode() + b"\0" + message, hashlib.sha256).digest()

    def seal(self, session: DashboardSession) -> str:
        payload = json.dumps(
            {
                "tid": session.token_id,
                "sid": session.session_id,
                "iat": int(session.issued_at.timestamp()),
                "exp": int(session.expires_at.timestamp()),
            },
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac('session', payload))}"

    def open(self, cookie: str, now: datetime) -> DashboardSession:
        """The session a cookie carries; ``AuthenticationError`` when it is forged,
        altered, malformed or expired."""
        if len(cookie) > MAX_COOKIE_CHARS:
            raise AuthenticationError("dashboard session cookie is too long; sign in again")
        body, _, mac = cookie.partition(".")
        try:
            payload, given = _unb64(body), _unb64(mac)
        except ValueError as e:
            raise AuthenticationError("dashboard session cookie is malformed; sign in again") from e
        if not hmac.compare_digest(given, self._mac("session", payload)):
            raise AuthenticationError("dashboard session cookie is not signed by this server")
        fields = json.loads(payload)
        tz = now.tzinfo
        session = DashboardSession(
            token_id=str(fields["tid"]),
            session_id=str(fields["sid"]),
            issued_at=datetime.fromtimestamp(int(fields["iat"]), tz),
            expires_at=datetime.fromtimestamp(int(fields["exp"]), tz),
        )
        if now >= session.expires_at:
            raise AuthenticationError("dashboard session expired; sign in again")
        return session

    def csrf_token(self, session_id: str) -> str:
        """The token every form of this session carries."""
        return _b64(self._mac("csrf", session_id.encode()))

    def check_csrf(self, session_id: str, given: str) -> None:
        if not hmac.compare_digest(given.encode(), self.csrf_token(session_id).encode()):
            raise PermissionDeniedError(
                "the form's CSRF token does not match this session; reload the page and"
                " submit again"
            )

    def login_nonce(self, now: datetime, random_part: str) -> str:
        """A signed, expiring nonce for the sign-in form's double-submit cookie
        (``random_part`` from :func:`fresh_id`)."""
        stamp = f"{random_part}.{int((now + LOGIN_FORM_LIFETIME).timestamp())}"
        return f"{stamp}.{_b64(self._mac('login', stamp.encode()))}"

    def login_csrf_token(self, nonce: str) -> str:
        return _b64(self._mac("login-form", nonce.encode()))

    def check_login(self, nonce: str, given: str, now: datetime) -> None:
        """The sign-in form came from a page this server served to this browser."""
        stamp, _, mac = nonce.rpartition(".")
        _, _, expires = stamp.rpartition(".")
        valid = (
            bool(stamp)
            and expires.isdigit()
            and hmac.compare_digest(mac.encode(), _b64(self._mac("login", stamp.encode())).encode())
            and hmac.compare_digest(given.encode(), self.login_csrf_token(nonce).encode())
        )
        if not valid:
            raise PermissionDeniedError(
                "the sign-in form is not one this server served to this browser; reload the"
                " sign-in page and try again"
            )
        if now.timestamp() >= int(expires):
            raise PermissionDeniedError("the sign-in form expired; reload the page and try again")


def same_origin(origin: str | None, referer: str | None, own_origin: str) -> bool:
    """A state-changing request came from one of our own pages: its ``Origin`` (or, when a
    browser sends none, its ``Referer``) is this server's origin."""
    if origin is not None and origin != "null":
        return origin == own_origin
    if referer:
        return referer == own_origin or referer.startswith(own_origin + "/")
    return False


def load_or_create_key(path: Path) -> bytes:
    """The dashboard's signing key, made once (random, mode 0600) on first start.
    Replicas behind one load balancer must share this file; deleting it signs everyone
    out."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        fresh = secrets.token_bytes(KEY_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as out:
            out.write(fresh)
            out.flush()
            os.fsync(out.fileno())
        return fresh
    if len(key) < KEY_BYTES:
        raise NotInitializedError(
            f"{path} holds {len(key)} bytes, not a dashboard key of {KEY_BYTES}; delete it"
            " and restart (everyone is signed out)"
        )
    return key
