"""HTTP routes: ``POST /v1/vision/classify`` and ``POST /v1/vision/detect``.

The image comes either as the raw request body (``Content-Type: image/png`` or
``image/jpeg``, options as query parameters: the fast path, no form parsing) or as a
multipart upload in a field named ``file``. Either way the body is read as it streams in
and refused with 413 as soon as it passes the upload cap, so a huge upload never sits in
memory. Decoding and inference then run in one worker-thread hop. Errors are agent
errors; the local API's one exception handler turns them into status codes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from edge_agent.errors import BadRequestError, PayloadTooLargeError, UnsupportedMediaError
from edge_agent.vision.classification import check_top_k
from edge_agent.vision.decode import BGRImage, DecodedImage, decode_image
from edge_agent.vision.model import Classification, Detections
from edge_agent.vision.provider import VisionModelProvider

R = TypeVar("R", Classification, Detections)
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
_FORM_OVERHEAD = 64 * 1024  # boundaries, part headers and the small fields
_MAX_FIELD_BYTES = 1024
_MAX_PARTS = 16
RAW_IMAGE_TYPES = (b"image/png", b"image/jpeg")
_HOW_TO_SEND = (
    "send the image as the request body with Content-Type image/png or image/jpeg, "
    "or as multipart/form-data with the image in a field named 'file'"
)


class ImageSize(BaseModel):
    width: int
    height: int


class Timings(BaseModel):
    """Where the handler's time went: reading the upload, handing the work to a worker
    thread and back, then the pipeline stages (HTTP before the handler is not included)."""

    read_ms: float
    thread_hop_ms: float
    decode_ms: float
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float


class ClassPrediction(BaseModel):
    label: str
    index: int
    score: float


class ClassifyResponse(BaseModel):
    model: str
    predictions: list[ClassPrediction]
    image: ImageSize
    timings_ms: Timings


class Box(BaseModel):
    x_min: float
    y_min: float
    x_max: float
    y_max: float


class DetectedObject(BaseModel):
    label: str
    score: float
    box: Box
    keypoints: list[tuple[float, float]]


class DetectResponse(BaseModel):
    model: str
    detections: list[DetectedObject]
    image: ImageSize
    timings_ms: Timings


@dataclass
class ImageUpload:
    """The parts of a vision request: the image bytes and optional small fields."""

    data: bytes | bytearray
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _PartState:
    name: str = ""
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)


def _declared_length(request: Request, limit: int, max_upload_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(
            f"the upload is {int(declared)} bytes; the limit is {max_upload_bytes} bytes"
        )


async def read_upload(request: Request, max_upload_bytes: int) -> ImageUpload:
    """Read a vision request body (raw image or multipart), refusing oversize input early."""
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype in RAW_IMAGE_TYPES:
        return await read_raw_image(request, max_upload_bytes)
    if ctype == b"multipart/form-data":
        return await read_multipart(request, max_upload_bytes, params.get(b"boundary"))
    received = ctype.decode("latin-1") or "no Content-Type"
    raise UnsupportedMediaError(f"the request body is {received}; {_HOW_TO_SEND}")


async def read_raw_image(request: Request, max_upload_bytes: int) -> ImageUpload:
    """The whole body is the image; the decoder checks what it really is."""
    _declared_length(request, max_upload_bytes, max_upload_bytes)
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_upload_bytes:
            raise PayloadTooLargeError(f"the upload exceeds the limit of {max_upload_bytes} bytes")
        chunks.append(chunk)
    return ImageUpload(chunks[0] if len(chunks) == 1 else b"".join(chunks))


async def read_multipart(
    request: Request, max_upload_bytes: int, boundary: bytes | None
) -> ImageUpload:
    """Stream a multipart body into an :class:`ImageUpload`, refusing oversize input early."""
    if not boundary:
        raise BadRequestError("the multipart/form-data Content-Type has no boundary")
    body_limit = max_upload_bytes + _FORM_OVERHEAD
    _declared_length(request, body_limit, max_upload_bytes)

    parts: dict[str, bytearray] = {}
    state = _PartState()
    count = 0

    def on_part_begin() -> None:
        nonlocal state, count
        count += 1
        if count > _MAX_PARTS:
            raise BadRequestError(f"too many form fields (at most {_MAX_PARTS})")
        state = _PartState()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_value += data[start:end]

    def on_header_end() -> None:
        if bytes(state.header_field).lower() == b"content-disposition":
            _, opts = parse_options_header(bytes(state.header_value))
            state.name = opts.get(b"name", b"").decode("utf-8", "replace")
        state.header_field.clear()
        state.header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        limit = max_upload_bytes if state.name == "file" else _MAX_FIELD_BYTES
        if len(state.body) + (end - start) > limit:
            if state.name == "file":
                raise PayloadTooLargeError(
                    f"the uploaded file exceeds the limit of {max_upload_bytes} bytes"
                )
            raise BadRequestError(f"form field {state.name!r} is longer than {limit} bytes")
        state.body += memoryview(data)[start:end]

    def on_part_end() -> None:
        if state.name:
            parts[state.name] = state.body

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise PayloadTooLargeError(
                    f"the upload exceeds the limit of {max_upload_bytes} bytes"
                )
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as e:
        raise BadRequestError(f"the multipart body is malformed: {e}") from e
    data = parts.pop("file", None)
    if data is None:
        raise BadRequestError("the form has no 'file' field: upload the image as 'file'")
    fields = {k: v.decode("utf-8", "replace") for k, v in parts.items()}
    return ImageUpload(data, fields)


def _field(upload: ImageUpload, name: str, query_value: str | None) -> str | None:
    value = upload.fields.get(name, query_value)
    return value.strip() or None if value is not None else None


def _parse_top_k(raw: str | None) -> int:
    if raw is None:
        return 5
    try:
        value = int(raw)
    except ValueError as e:
        raise BadRequestError(f"top_k must be an integer, got {raw!r}") from e
    return check_top_k(value)


@dataclass(frozen=True)
class _Pipeline(Generic[R]):
    """A decoded image, the model's result, and how long decoding and the thread hops took."""

    image: DecodedImage
    result: R
    decode_ms: float
    hop_ms: float


async def _run_in_worker(
    data: bytes | bytearray, max_pixels: int, infer: Callable[[BGRImage], R]
) -> _Pipeline[R]:
    """Decode and infer in one worker-thread hop (the event loop keeps serving meanwhile)."""

    def work() -> tuple[DecodedImage, R, float, float, float]:
        picked_up = time.perf_counter()
        image = decode_image(data, max_pixels=max_pixels)
        decoded = time.perf_counter()
        return image, infer(image.pixels), picked_up, decoded, time.perf_counter()

    submitted = time.perf_counter()
    image, result, picked_up, decoded, done = await run_in_threadpool(work)
    hop = (picked_up - submitted) + (time.perf_counter() - done)
    return _Pipeline(image, result, (decoded - picked_up) * 1e3, hop * 1e3)


def _timings(read_ms: float, run: _Pipeline[Classification] | _Pipeline[Detections]) -> Timings:
    times = run.result.times
    return Timings(
        read_ms=read_ms,
        thread_hop_ms=run.hop_ms,
        decode_ms=run.decode_ms,
        preprocess_ms=times.preprocess_ms,
        inference_ms=times.inference_ms,
        postprocess_ms=times.postprocess_ms,
    )


_RAW_IMAGE_SCHEMA: dict[str, Any] = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image as the raw body (model and top_k as query parameters), "
        "or a multipart form with the image in 'file'.",
        "content": {
            "image/png": _RAW_IMAGE_SCHEMA,
            "image/jpeg": _RAW_IMAGE_SCHEMA,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string"},
                        "top_k": {"type": "integer", "minimum": 1},
                    },
                }
            },
        },
    }
}


def vision_router(
    provider: VisionModelProvider,
    *,
    max_upload_bytes: int = 50_000_000,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> APIRouter:
    """Routes for image classification and detection with the active release's models.

    Wire with ``AgentSettings``: ``vision_router(provider,
    max_upload_bytes=settings.max_upload_bytes, max_image_pixels=settings.max_image_pixels)``.
    """
    router = APIRouter(prefix="/v1/vision", tags=["vision"])

    @router.post("/classify", response_model=ClassifyResponse, openapi_extra=_REQUEST_BODY_DOC)
    async def classify(
        request: Request,
        model: str | None = Query(default=None, max_length=128),
        top_k: str | None = Query(default=None, max_length=8),
    ) -> ClassifyResponse:
        started = time.perf_counter()
        upload = await read_upload(request, max_upload_bytes)
        read_ms = (time.perf_counter() - started) * 1e3
        name = _field(upload, "model", model)
        k = _parse_top_k(_field(upload, "top_k", top_k))
        vision_model = provider.vision_model(name, "classify")
        run = await _run_in_worker(
            upload.data, max_image_pixels, lambda pixels: vision_model.classify(pixels, k)
        )
        return ClassifyResponse(
            model=vision_model.name,
            predictions=[
                ClassPrediction(label=p.label, index=p.index, score=p.score)
                for p in run.result.predictions
            ],
            image=ImageSize(width=run.image.width, height=run.image.height),
            timings_ms=_timings(read_ms, run),
        )

    @router.post("/detect", response_model=DetectResponse, openapi_extra=_REQUEST_BODY_DOC)
    async def detect(
        request: Request,
        model: str | None = Query(default=None, max_length=128),
    ) -> DetectResponse:
        started = time.perf_counter()
        upload = await read_upload(request, max_upload_bytes)
        read_ms = (time.perf_counter() - started) * 1e3
        vision_model = provider.vision_model(_field(upload, "model", model), "detect")
        run = await _run_in_worker(upload.data, max_image_pixels, vision_model.detect)
        return DetectResponse(
            model=vision_model.name,
            detections=[
                DetectedObject(
                    label=d.label,
                    score=d.score,
                    box=Box(x_min=d.box[0], y_min=d.box[1], x_max=d.box[2], y_max=d.box[3]),
                    keypoints=list(d.keypoints),
                )
                for d in run.result.detections
            ],
            image=ImageSize(width=run.image.width, height=run.image.height),
            timings_ms=_timings(read_ms, run),
        )

    return router
