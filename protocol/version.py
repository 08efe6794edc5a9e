"""Protocol version. Bump on any incompatible change to a message or path."""

PROTOCOL_VERSION = 1
