"""Measuring the local API: an ASGI middleware (request counts per feature, latency,
error classes, RAG abstentions) and a generation observer (TTFT, time per output token,
prompt length, tokens generated). Both only add integers to :class:`AgentMetrics`;
neither keeps anything of a request (no text, no header, no path beyond its feature)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from edge_agent.telemetry.metrics import AgentMetrics, error_class
from protocol.telemetry import SensitiveField

__all__ = ["GenerationObserver", "TelemetryMiddleware", "feature_of"]

_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
    "/v1/rag/query": "rag",
}
_VISION = "/v1/vision/"
_LATENCY: dict[str, SensitiveField] = {
    "completion": "completion_seconds",
    "embedding": "embedding_seconds",
    "vision": "vision_seconds",
    "rag": "rag_seconds",
}
# how the API's JSON says a grounded answer abstained (compact separators; inside a
# generated string the quotes would be escaped, so model text cannot fake it)
_ABSTAINED = b'"abstained":true'

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]
T = TypeVar("T")


def feature_of(method: str, path: str) -> str | None:
    if method != "POST":
        return None
    feature = _ROUTES.get(path)
    if feature is None and path.startswith(_VISION):
        return "vision"
    return feature


class TelemetryMiddleware:
    """Pure ASGI (no per-request objects beyond a closure): counts and times requests."""

    def __init__(
        self, app: Any, *, metrics: AgentMetrics, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        feature = feature_of(scope["method"], scope["path"])
        metrics, clock = self._metrics, self._clock
        started = clock()
        state = {"status": 0, "done": False, "abstained": False}
        scan = feature in ("rag", "chat")

        def finish() -> None:
            state["done"] = True
            status = int(state["status"]) or 500
            klass = error_class(status)
            if klass is not None:
                metrics.error(klass)
            if feature is None:
                return
            metrics.request(feature)
            if klass is None and feature in _LATENCY:
                metrics.observe(_LATENCY[feature], clock() - started)
            if state["abstained"]:
                metrics.rag_abstention()

        async def counting_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = message["status"]
            elif kind == "http.response.body":
                if scan and _ABSTAINED in message.get("body", b""):
                    state["abstained"] = True
                if not message.get("more_body", False) and not state["done"]:
                    finish()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if not state["done"]:  # the app raised, or the client left mid-stream
                finish()


class GenerationObserver:
    """Wraps a generation's piece iterator to time it (runs on the model's thread)."""

    def __init__(self, metrics: AgentMetrics, clock: Callable[[], float] = time.perf_counter):
        self._metrics = metrics
        self._clock = clock

    def wrap(
        self, produce: Callable[[T], Iterator[Any]], *, chat: bool
    ) -> Callable[[T], Iterator[Any]]:
        """``produce`` timed from now (the request's arrival: queue wait counts in TTFT)."""
        metrics, clock = self._metrics, self._clock
        started = clock()

        def observed(model: T) -> Iterator[Any]:
            first_at: float | None = None
            for piece in produce(model):
                if first_at is None and piece.text:
                    first_at = clock()
                if piece.finish_reason is not None:
                    end = clock()
                    metrics.generation(
                        chat=chat,
                        ttft_seconds=None if first_at is None else first_at - started,
                        decode_seconds=0.0 if first_at is None else end - first_at,
                        prompt_tokens=piece.prompt_tokens,
                        output_tokens=piece.completion_tokens,
                    )
                yield piece

        return observed
