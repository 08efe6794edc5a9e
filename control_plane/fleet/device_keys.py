"""Is 32 bytes a usable Ed25519 public key? (pure; RFC 8032 point decoding)

``cryptography`` accepts any 32 bytes as a public key. A device key must decode to a
curve point and must not be of small order: signatures by a small-order key can be
forged by anyone, so such a key would let others impersonate the device.
"""

from __future__ import annotations

_P = 2**255 - 19
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _decode(raw: bytes) -> Point | None:
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    sign = raw[31] >> 7
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        if sign:
            return None
        return (0, y, 1, 0)
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P:
        return None
    if x & 1 != sign:
        x = _P - x
    return (x, y, 1, x * y % _P)


def _double(p: Point) -> Point:
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = (a + b) % _P
    e = (h - (x1 + y1) * (x1 + y1)) % _P
    g = (a - b) % _P
    f = (c + g) % _P
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def is_usable_ed25519_public_key(raw: bytes) -> bool:
    """True when ``raw`` encodes a curve point whose order is not small."""
    if len(raw) != 32:
        return False
    point = _decode(raw)
    if point is None:
        return False
    for _ in range(3):  # multiply by the cofactor 8
        point = _double(point)
    x, y, z, _ = point
    return not (x % _P == 0 and (y - z) % _P == 0)  # not the identity
