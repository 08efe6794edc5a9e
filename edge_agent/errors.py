"""Every error the agent raises, grouped by whose fault it is.

The HTTP status of an error comes from its class (``http_status``) and is applied
in one exception handler of the local API; nothing picks a status from message text.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of all agent errors. The message says what happened and what to do."""

    http_status = 500
    error_type = "internal_error"


# --- the caller sent something wrong (4xx) -------------------------------------------


class BadRequestError(AgentError):
    """The request is malformed or asks for something impossible."""

    http_status = 400
    error_type = "invalid_request_error"


class ContextOverflowError(BadRequestError):
    """The prompt does not fit the model's context window."""


class UnauthorizedError(AgentError):
    http_status = 401
    error_type = "authentication_error"


class NotFoundError(AgentError):
    """An unknown model, document or resource was named."""

    http_status = 404
    error_type = "not_found_error"


class PayloadTooLargeError(BadRequestError):
    http_status = 413


class UnsupportedMediaError(BadRequestError):
    http_status = 415


class ClientGoneError(BadRequestError):
    """The client closed the connection before its answer was ready; its work was
    cancelled. Nobody reads the answer (499, as nginx names it)."""

    http_status = 499
    error_type = "client_closed_request"


# --- the device is out of some resource (retry later) --------------------------------


class ResourceExhaustedError(AgentError):
    """A queue, memory budget or disk is full; the caller may retry later."""

    http_status = 503
    error_type = "server_busy"


class BusyError(ResourceExhaustedError):
    """The model's request queue is full."""


class NoModelError(ResourceExhaustedError):
    """No verified release is installed yet, so there is nothing to serve."""


class DiskFullError(ResourceExhaustedError):
    """The state directory's filesystem has too little free space for a download; nothing
    was installed and the device keeps serving what it has."""


# --- the update source lied (never installed, device keeps serving) ------------------


class BadUpdateError(AgentError):
    """The control plane, a mirror or the network delivered something untrustworthy."""

    http_status = 502
    error_type = "bad_update"


class UntrustedSignatureError(BadUpdateError):
    """A signature is missing, invalid, or by a key the trusted root does not list."""


class RollbackAttackError(BadUpdateError):
    """An assignment or metadata version is older than one already accepted."""


class ExpiredUpdateError(BadUpdateError):
    """Metadata or the assignment has expired: no new install until it is renewed."""


class WrongDeviceError(BadUpdateError):
    """The assignment names another device."""


class UnsignedTargetError(BadUpdateError):
    """The director assigned a target that the image repository never signed."""


class TamperedArtifactError(BadUpdateError):
    """Downloaded bytes do not match the signed hash or exceed the signed length."""


# --- the link to the control plane failed (retry with backoff) -----------------------


class TransportError(AgentError):
    """The control plane could not be reached or answered with a server error."""

    http_status = 504
    error_type = "transport_error"


# --- local state -----------------------------------------------------------------------


class StoreError(AgentError):
    """The local store is inconsistent; recovery falls back to a verified release."""


class StateDatabaseCorruptError(StoreError):
    """``state.db`` is not a readable SQLite database; it is moved aside and rebuilt."""


class StateDatabaseTooNewError(StoreError):
    """``state.db`` has a schema version newer than this agent knows: a newer agent wrote
    it (the agent was downgraded). It is left untouched, never rebuilt."""


class StoreUnwritableError(StoreError):
    """``state.db`` cannot be written (disk full, read-only filesystem); the device serves
    its verified release read-only and retries the write later."""


class ConfigError(AgentError):
    """The agent's own settings are invalid (the operator must fix them)."""
