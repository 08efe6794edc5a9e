"""Every error the control plane raises, grouped by whose fault it is.

The HTTP status comes from the class (``http_status``), applied in one exception
handler. Messages say what happened and what to do; they never contain secrets.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Root of all control-plane errors."""

    http_status = 500
    error_type = "internal_error"


# --- the caller sent something wrong -------------------------------------------------


class InvalidRequestError(ControlPlaneError):
    """The request names something impossible or carries bad values."""

    http_status = 422
    error_type = "invalid_request"


class InvalidArtifactError(InvalidRequestError):
    """Uploaded bytes are not what their declared format says."""

    error_type = "invalid_artifact"


class TargetsSignatureRejectedError(InvalidRequestError):
    """Uploaded targets metadata is unsigned, signed by the wrong key, expired or altered."""

    error_type = "targets_signature_rejected"


class ArtifactTooLargeError(ControlPlaneError):
    http_status = 413
    error_type = "artifact_too_large"


class NotFoundError(ControlPlaneError):
    http_status = 404
    error_type = "not_found"


class ConflictError(ControlPlaneError):
    """The request clashes with existing state (a duplicate, a reused key)."""

    http_status = 409
    error_type = "conflict"


class TargetsKeyOfflineError(ConflictError):
    """Publishing needs the targets key, which has been moved off this server."""

    error_type = "targets_key_offline"


class RootKeyOfflineError(ConflictError):
    """A root change (key rotation) needs the offline root key, which is not at hand."""

    error_type = "root_key_offline"


class KeyRotationUnfinishedError(ConflictError):
    """A previous key rotation left a staged key file behind; finish or undo it first."""

    error_type = "key_rotation_unfinished"


class ReleaseAwaitingSignatureError(ConflictError):
    """The release is stored but its targets are not signed yet; it cannot be assigned."""

    error_type = "release_awaiting_signature"


class TargetsVersionConflictError(ConflictError):
    """Signed targets metadata is not the next version, or the pending set changed."""

    error_type = "targets_version_conflict"


class NothingToSignError(ConflictError):
    """No release awaits the release manager's signature."""

    error_type = "nothing_to_sign"


class TooManyRequestsError(ControlPlaneError):
    """The caller sent more requests than its share within a window; retry later."""

    http_status = 429
    error_type = "too_many_requests"


# --- who is asking -------------------------------------------------------------------


class AuthenticationError(ControlPlaneError):
    """No credential, an unknown one, or a signature that does not verify."""

    http_status = 401
    error_type = "authentication_error"


class EnrollmentTokenError(AuthenticationError):
    """The one-time enrollment token is unknown, already used or expired."""

    error_type = "enrollment_token_rejected"


class PermissionDeniedError(ControlPlaneError):
    http_status = 403
    error_type = "permission_denied"


# --- the server's own state ----------------------------------------------------------


class NotInitializedError(ControlPlaneError):
    """The data directory or database has not been set up with ``outpost-cp init``."""

    error_type = "not_initialized"


class AlreadyInitializedError(ControlPlaneError):
    http_status = 409
    error_type = "already_initialized"


class ServiceUnavailableError(ControlPlaneError):
    """A dependency (the database) is down or contended; retry later."""

    http_status = 503
    error_type = "service_unavailable"
