"""Errors raised while checking wire data. All say what was wrong with the data."""


class ProtocolError(Exception):
    """Root of every error about data received from the other side."""


class EnvelopeFormatError(ProtocolError):
    """The envelope or its payload is not well formed."""


class SignatureError(ProtocolError):
    """Signatures are missing, made by an untrusted key, or do not verify."""


class StaleRequestError(ProtocolError):
    """A signed request carries a timestamp outside the accepted window."""
