"""URL paths served by the control plane, shared by both sides."""

ENROLL = "/api/v1/devices/enroll"
DEVICE_ASSIGNMENT = "/api/v1/device/assignment"
DEVICE_STATUS = "/api/v1/device/status"
REPO_METADATA = "/repo/metadata"  # + "/<file>", e.g. "/repo/metadata/timestamp.json"
REPO_TARGETS = "/repo/targets"  # + "/<target path>"
HEALTH = "/healthz"
