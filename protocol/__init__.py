"""The wire contract shared by the Outpost agent and control plane.

Everything that crosses the network between a device and the control plane is
defined here, once: typed messages, the signing envelope, device request
authentication and the URL paths. Both sides and the tests import from here.
"""

from protocol import paths
from protocol.canonical import canonical_json
from protocol.device_auth import DeviceAuthHeader, sign_device_request, verify_device_request
from protocol.envelope import Signature, SignedEnvelope, sign_envelope, verify_envelope
from protocol.errors import (
    EnvelopeFormatError,
    ProtocolError,
    SignatureError,
    StaleRequestError,
)
from protocol.keys import (
    Ed25519KeyPair,
    PublicKey,
    generate_key_pair,
    key_id,
    load_private_key,
    public_key_from_hex,
    write_private_key,
)
from protocol.messages import (
    ARTIFACT_FORMATS,
    ARTIFACT_KINDS,
    ASSIGNMENT_PAYLOAD_TYPE,
    DIRECTOR_ROOT_FIELD,
    FINAL_INSTALL_STATES,
    AcceptanceFigure,
    AcceptanceReport,
    AcceptanceReportAck,
    AcceptanceResult,
    Assignment,
    EnrollRequest,
    EnrollResponse,
    HardwareFacts,
    InstallState,
    StatusReport,
    StatusReportAck,
    TargetRef,
)
from protocol.version import PROTOCOL_VERSION

__all__ = [
    "ARTIFACT_FORMATS",
    "ARTIFACT_KINDS",
    "ASSIGNMENT_PAYLOAD_TYPE",
    "DIRECTOR_ROOT_FIELD",
    "FINAL_INSTALL_STATES",
    "PROTOCOL_VERSION",
    "AcceptanceFigure",
    "AcceptanceReport",
    "AcceptanceReportAck",
    "AcceptanceResult",
    "Assignment",
    "DeviceAuthHeader",
    "Ed25519KeyPair",
    "EnrollRequest",
    "EnrollResponse",
    "EnvelopeFormatError",
    "HardwareFacts",
    "InstallState",
    "ProtocolError",
    "PublicKey",
    "Signature",
    "SignatureError",
    "SignedEnvelope",
    "StaleRequestError",
    "StatusReport",
    "StatusReportAck",
    "TargetRef",
    "canonical_json",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "paths",
    "public_key_from_hex",
    "sign_device_request",
    "sign_envelope",
    "verify_device_request",
    "verify_envelope",
    "write_private_key",
]
