"""Image decoding, one test per hostile or unusual input."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from edge_agent.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError
from edge_agent.vision.decode import PNG_SIGNATURE, decode_image, read_header
from tests.vision.conftest import jpeg_bytes, png_bytes

LIMIT = 1_000_000


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking PNG that declares a huge canvas but carries a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def sample_bgr(h: int = 20, w: int = 30) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_header_gives_dimensions() -> None:
    header = read_header(png_bytes(sample_bgr(20, 30)))
    assert (header.format, header.width, header.height) == ("png", 30, 20)


def test_jpeg_header_gives_dimensions() -> None:
    header = read_header(jpeg_bytes(sample_bgr(20, 30)))
    assert (header.format, header.width, header.height) == ("jpeg", 30, 20)


def test_text_is_not_an_image() -> None:
    with pytest.raises(UnsupportedMediaError, match="not a PNG or JPEG"):
        decode_image(b"hello, this is not an image at all", max_pixels=LIMIT)


def test_empty_upload_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError, match="empty"):
        decode_image(b"", max_pixels=LIMIT)


def test_gif_is_named_and_refused() -> None:
    with pytest.raises(UnsupportedMediaError, match="GIF"):
        decode_image(b"GIF89a" + b"\x00" * 20, max_pixels=LIMIT)


def test_truncated_png_is_refused() -> None:
    data = png_bytes(sample_bgr(64, 64))
    with pytest.raises(BadRequestError, match="truncated"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_png_with_flipped_bit_is_refused() -> None:
    data = bytearray(png_bytes(sample_bgr(64, 64)))
    data[60] ^= 0xFF  # inside IDAT
    with pytest.raises(BadRequestError, match="checksum"):
        decode_image(bytes(data), max_pixels=LIMIT)


def test_truncated_jpeg_is_refused() -> None:
    data = jpeg_bytes(sample_bgr(64, 64))
    with pytest.raises(BadRequestError, match="truncated"):
        decode_image(data[: len(data) - 200], max_pixels=LIMIT)


def test_png_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 200
    with pytest.raises(PayloadTooLargeError, match="10000000000 pixels"):
        decode_image(bomb, max_pixels=LIMIT)


def test_jpeg_decompression_bomb_is_refused_before_decoding() -> None:
    data = bytearray(jpeg_bytes(sample_bgr(16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    with pytest.raises(PayloadTooLargeError, match="limit"):
        decode_image(bytes(data), max_pixels=LIMIT)


def test_zero_sized_png_is_refused() -> None:
    with pytest.raises(BadRequestError, match="zero"):
        decode_image(png_bomb(0, 10), max_pixels=LIMIT)


def test_alpha_is_composited_over_white() -> None:
    bgra = np.zeros((4, 4, 4), dtype=np.uint8)
    bgra[..., 2] = 255  # red
    bgra[0, 0, 3] = 255  # one opaque pixel, the rest fully transparent
    bgra[1, 1, 3] = 128
    img = decode_image(png_bytes(bgra), max_pixels=LIMIT)
    assert img.source_channels == 4
    assert img.pixels.shape == (4, 4, 3)
    assert tuple(img.pixels[0, 0]) == (0, 0, 255)
    assert tuple(img.pixels[3, 3]) == (255, 255, 255)
    assert tuple(img.pixels[1, 1]) == (127, 127, 255)


def test_sixteen_bit_is_scaled_to_eight_bit() -> None:
    px = np.zeros((2, 2, 3), dtype=np.uint16)
    px[..., 1] = 65535
    px[0, 0] = (257 * 10, 257 * 20, 257 * 30)
    img = decode_image(png_bytes(px), max_pixels=LIMIT)
    assert img.source_bit_depth == 16
    assert img.pixels.dtype == np.uint8
    assert tuple(img.pixels[1, 1]) == (0, 255, 0)
    assert tuple(img.pixels[0, 0]) == (10, 20, 30)


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    for data in (png_bytes(gray), jpeg_bytes(np.repeat(gray[..., None], 8, 0)[:4])):
        img = decode_image(data, max_pixels=LIMIT)
        assert img.pixels.shape[2] == 3
        assert np.array_equal(img.pixels[..., 0], img.pixels[..., 2])


def test_gray_with_alpha_and_sixteen_bit_together() -> None:
    ga = np.zeros((3, 3, 4), dtype=np.uint16)
    ga[..., :3] = 0  # black
    ga[..., 3] = 65535
    ga[2, 2, 3] = 0  # transparent corner -> white
    img = decode_image(png_bytes(ga), max_pixels=LIMIT)
    assert tuple(img.pixels[0, 0]) == (0, 0, 0)
    assert tuple(img.pixels[2, 2]) == (255, 255, 255)


def test_jpeg_decodes_to_bgr() -> None:
    px = np.full((16, 16, 3), (200, 30, 10), dtype=np.uint8)
    img = decode_image(jpeg_bytes(px), max_pixels=LIMIT)
    assert np.abs(img.pixels.astype(int) - px.astype(int)).max() < 8
    assert cv2.imencode(".png", img.pixels)[0]
