"""Safe image decoding: check the container before OpenCV sees a byte.

The pixel count comes from the PNG/JPEG header, so a decompression bomb is refused
before any pixel buffer is allocated. Truncated files are refused because their
structure (PNG chunks up to IEND, a JPEG end-of-image marker after the scan) is incomplete.
Every decoded image comes out as 8-bit, 3-channel BGR (OpenCV's order): 16-bit samples
are scaled down, grayscale is expanded and transparency is composited over white.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_agent.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError

ImageFormat = Literal["png", "jpeg"]
BGRImage = npt.NDArray[np.uint8]
ImageBytes = bytes | bytearray

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_SNIFFED_OTHER = (
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "RIFF/WebP"),
    (b"%PDF", "PDF"),
)
_ACCEPTED = "send a PNG or JPEG image"


@dataclass(frozen=True)
class ImageHeader:
    """What the container says before decoding: format and dimensions."""

    format: ImageFormat
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit BGR image and what it was converted from."""

    pixels: BGRImage
    format: ImageFormat
    source_channels: int
    source_bit_depth: int

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def read_header(data: ImageBytes) -> ImageHeader:
    """Identify a PNG or JPEG and read its dimensions; check that the file is complete."""
    if data.startswith(PNG_SIGNATURE):
        return _png_header(data)
    if data.startswith(JPEG_SOI):
        return _jpeg_header(data)
    if not data:
        raise BadRequestError("the uploaded file is empty; " + _ACCEPTED)
    for magic, name in _SNIFFED_OTHER:
        if data.startswith(magic):
            raise UnsupportedMediaError(f"{name} images are not supported; {_ACCEPTED}")
    raise UnsupportedMediaError(f"the upload is not a PNG or JPEG image; {_ACCEPTED}")


def _png_header(data: ImageBytes) -> ImageHeader:
    pos = len(PNG_SIGNATURE)
    width = height = 0
    first = True
    view = memoryview(data)  # chunk bodies are checksummed in place, not copied
    while True:
        if pos + 8 > len(data):
            raise BadRequestError("the PNG is truncated (it ends before its IEND chunk)")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise BadRequestError("the PNG is truncated (a chunk runs past the end of the file)")
        body = view[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(body, zlib.crc32(ctype)) & 0xFFFFFFFF != crc:
            raise BadRequestError(f"the PNG is corrupt (bad checksum in its {ctype!r} chunk)")
        if first:
            if ctype != b"IHDR" or length != 13:
                raise BadRequestError("the PNG is corrupt (it does not start with IHDR)")
            width, height = struct.unpack_from(">II", body)
            first = False
        if ctype == b"IEND":
            break
        pos = end
    if width == 0 or height == 0:
        raise BadRequestError("the PNG has zero width or height")
    return ImageHeader("png", width, height)


def _jpeg_header(data: ImageBytes) -> ImageHeader:
    pos = 2
    size: tuple[int, int] | None = None
    while True:
        while (
            pos < len(data) and data[pos] == 0xFF and pos + 1 < len(data) and data[pos + 1] == 0xFF
        ):
            pos += 1  # fill bytes
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise BadRequestError("the JPEG is truncated or corrupt (bad segment marker)")
        marker = data[pos + 1]
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xD9:
            raise BadRequestError("the JPEG ends before its image data")
        (seglen,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if seglen < 2 or pos + 2 + seglen > len(data):
            raise BadRequestError("the JPEG is truncated (a segment runs past the end)")
        if marker in _JPEG_SOF:
            if seglen < 8:
                raise BadRequestError("the JPEG frame header is too short")
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            size = (width, height)
        if marker == 0xDA:
            scan_start = pos + 2 + seglen
            break
        pos += 2 + seglen
    if size is None:
        raise BadRequestError("the JPEG has no frame header before its image data")
    if size[0] == 0 or size[1] == 0:
        raise BadRequestError("the JPEG has zero width or height")
    # Entropy-coded data never contains FF D9 (0xFF is stuffed), so EOI after the scan
    # start is the real end of the image; without it the file was cut short.
    if data.rfind(b"\xff\xd9", scan_start) < 0:
        raise BadRequestError("the JPEG is truncated (no end-of-image marker)")
    return ImageHeader("jpeg", size[0], size[1])


def check_pixel_limit(header: ImageHeader, max_pixels: int) -> None:
    """Refuse an image whose declared size exceeds ``max_pixels`` (a decompression bomb)."""
    if header.pixels > max_pixels:
        raise PayloadTooLargeError(
            f"the image is {header.width}x{header.height} = {header.pixels} pixels; "
            f"the limit is {max_pixels} pixels: scale it down before sending"
        )


def to_bgr8(pixels: npt.NDArray[np.generic]) -> BGRImage:
    """Convert any OpenCV-decoded image (gray, gray+alpha, BGR, BGRA; 8 or 16 bit) to BGR8."""
    img: npt.NDArray[np.generic] = pixels
    if img.dtype == np.uint16:
        img = np.right_shift(img.astype(np.uint16), 8).astype(
            np.uint8
        )  # exact for 16-bit values that widened 8-bit ones
    elif img.dtype != np.uint8:
        raise UnsupportedMediaError(f"{img.dtype} samples are not supported; " + _ACCEPTED)
    img8 = img.astype(np.uint8, copy=False)
    import cv2  # on first use: an agent without vision models never loads OpenCV

    if img8.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(img8, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    channels = img8.shape[2]
    if channels == 3:
        return np.ascontiguousarray(img8)
    if channels == 1:
        return np.ascontiguousarray(cv2.cvtColor(img8, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if channels == 2:
        img8 = np.dstack([img8[..., 0], img8[..., 0], img8[..., 0], img8[..., 1]])
    if img8.shape[2] == 4:
        return composite_over_white(img8)
    raise UnsupportedMediaError(f"images with {channels} channels are not supported")


def composite_over_white(bgra: npt.NDArray[np.uint8]) -> BGRImage:
    """Flatten BGRA onto a white background (exact integer rounding)."""
    alpha = bgra[..., 3:4].astype(np.uint16)
    colour = bgra[..., :3].astype(np.uint16)
    # c*a + 255*(255-a) <= 65025, so uint16 cannot overflow.
    mixed = colour * alpha + (255 - alpha) * 255 + 127
    return np.ascontiguousarray((mixed // 255).astype(np.uint8))


def decode_image(data: ImageBytes, *, max_pixels: int) -> DecodedImage:
    """Check, then decode ``data`` into 8-bit BGR; raise a 4xx agent error if it is unusable."""
    header = read_header(data)
    check_pixel_limit(header, max_pixels)
    buf = np.frombuffer(data, dtype=np.uint8)
    import cv2  # on first use: an agent without vision models never loads OpenCV

    # JPEG: IMREAD_COLOR applies the EXIF orientation; PNG: keep alpha and 16-bit samples.
    flags = cv2.IMREAD_COLOR if header.format == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        raw = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise BadRequestError(f"the {header.format.upper()} could not be decoded: {e}") from e
    if raw is None or raw.size == 0:
        raise BadRequestError(f"the {header.format.upper()} could not be decoded (corrupt data)")
    channels = 1 if raw.ndim == 2 else int(raw.shape[2])
    depth = 16 if raw.dtype == np.uint16 else 8
    return DecodedImage(to_bgr8(raw), header.format, channels, depth)
