"""The agent under test, over its local HTTP API (the adapter; the rules are in runner.py).

Every call is one request a real client would send (a streamed chat with usage, an
embedding, an image upload, a RAG retrieval) timed from the request to the answer; the
agent's own stage timings are not used, so what is measured is what a caller waits for.
"""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from device_tests.errors import AgentAuthError, AgentError, AgentUnreachableError
from device_tests.workload import Workload
from edge_agent.updates.acceptance import NotServed

__all__ = ["HttpAgent"]


class HttpAgent:
    """An agent's local API at ``url`` with bearer ``token``, measured with ``workload``
    (an :class:`~edge_agent.updates.acceptance.Observer`); ``facts`` checks both."""

    def __init__(
        self, url: str, token: str, workload: Workload, *, timeout_s: float = 120.0
    ) -> None:
        self.url = url.rstrip("/")
        parsed = urlsplit(self.url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise AgentError(f"--agent {url!r} is not an http://host:port address")
        self._host, self._port = parsed.hostname, parsed.port or 80
        self._auth = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._workload = workload
        self._first: dict[str, str | None] = {}
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        )
        self._vision_task: dict[str, str] = {}

    def close(self) -> None:
        self._http.close()
        if self._conn is not None:
            self._conn.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise AgentUnreachableError(
                f"no agent answers at {self.url} ({type(e).__name__}: {e}); is it running, and"
                " is --agent the address of its local API (default http://127.0.0.1:8800)?"
            ) from e
        if r.status_code == 401:
            raise AgentAuthError(
                f"the agent at {self.url} refused the API token (401); pass the token in"
                " <state dir>/api-token with --token"
            )
        return r

    def facts(self) -> dict[str, Any]:
        """What the agent serves (``/v1/status``); also proves the address and token."""
        r = self._request("GET", "/v1/status")
        if r.status_code != 200:
            raise AgentError(f"GET /v1/status answered {r.status_code}: {r.text[:300]}")
        body: dict[str, Any] = r.json()
        return body

    def models(self, kind: str) -> list[str]:
        r = self._request("GET", "/v1/models")
        if r.status_code != 200:
            raise AgentError(f"GET /v1/models answered {r.status_code}: {r.text[:300]}")
        return [str(m["id"]) for m in r.json()["data"] if m.get("kind") == kind]

    def observe(self, kind: str, model: str | None, i: int) -> dict[str, float]:
        w = self._workload
        if kind == "chat":
            return self.chat(self._model("llm"), w.pick(w.chat_prompts, i), w.chat_max_tokens)
        if kind == "embedding":
            return {"ms": self.embed(self._model("embedding"), w.pick(w.sentences, i))}
        if kind == "vision":
            assert model is not None  # vision figures are per model
            images = w.images_for(model)
            return self.vision(model, images[i % len(images)])
        if kind == "rag":
            if not self._has_rag_index():
                raise NotServed("the agent serves no RAG index")
            return {"ms": self.rag_query(w.pick(w.questions, i), w.rag_k)}
        if kind == "memory":
            process = self.facts().get("process") or {}
            if process.get("peak_rss_mb") is None:
                raise NotServed("the agent does not report its peak memory in /v1/status")
            return {"peak_rss_mb": float(process["peak_rss_mb"])}
        if kind == "cold_start":
            raise NotServed(
                "a running agent has loaded its models; cold start is measured by the"
                " on-device check at activation"
            )
        raise NotServed(f"the suite cannot measure queries of kind {kind!r}")

    def _model(self, kind: str) -> str:
        if kind not in self._first:
            names = self.models(kind)
            self._first[kind] = names[0] if names else None
        name = self._first[kind]
        if name is None:
            raise NotServed(f"the agent serves no {kind} model")
        return name

    def _has_rag_index(self) -> bool:
        r = self._request("GET", "/v1/rag/status")
        return r.status_code == 200 and bool(r.json().get("index"))

    def chat(self, model: str, prompt: str, max_tokens: int) -> dict[str, float]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first: float | None = None
        last = started
        tokens = 0
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code == 401:
                    raise AgentAuthError(f"the agent at {self.url} refused the API token (401)")
                if r.status_code != 200:
                    r.read()
                    raise AgentError(f"chat on {model!r} answered {r.status_code}: {r.text[:300]}")
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if event.get("usage"):
                        tokens = int(event["usage"]["completion_tokens"])
                    for choice in event.get("choices", []):
                        if choice.get("delta", {}).get("content"):
                            now = time.perf_counter()
                            first = now if first is None else first
                            last = now
        except httpx.TransportError as e:
            raise AgentUnreachableError(f"the chat stream from {self.url} broke: {e}") from e
        if first is None:
            raise AgentError(f"chat on {model!r} streamed no text (check the release's model)")
        out = {"ttft_ms": (first - started) * 1e3}
        if tokens > 1 and last > first:
            out["decode_tokens_per_s"] = (tokens - 1) / (last - first)
        return out

    def _timed_post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes, float]:
        """POST over a kept-alive ``http.client`` connection (the lightest client: what is
        timed is the agent, not the client library); (status, body, milliseconds)."""
        headers = {"Authorization": self._auth, "Content-Type": content_type}
        for attempt in (1, 2):  # a kept-alive connection the server closed is opened again
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=120)
            started = time.perf_counter()
            try:
                self._conn.request("POST", path, body=body, headers=headers)
                response = self._conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                self._conn = None
                if attempt == 2 or isinstance(e, ConnectionRefusedError):
                    raise AgentUnreachableError(
                        f"no agent answers at {self.url} ({type(e).__name__}: {e})"
                    ) from e
                continue
            elapsed = (time.perf_counter() - started) * 1e3
            if response.status == 401:
                raise AgentAuthError(f"the agent at {self.url} refused the API token (401)")
            return response.status, payload, elapsed
        raise AssertionError("unreachable")

    def _timed_json(self, path: str, body: dict[str, Any]) -> tuple[int, bytes, float]:
        return self._timed_post(path, json.dumps(body).encode(), "application/json")

    def embed(self, model: str, sentence: str) -> float:
        status, body, elapsed = self._timed_json(
            "/v1/embeddings", {"model": model, "input": sentence}
        )
        if status != 200:
            raise AgentError(f"embedding on {model!r} answered {status}: {body[:300]!r}")
        return elapsed

    def vision(self, model: str, image: bytes) -> dict[str, float]:
        tasks = [self._vision_task[model]] if model in self._vision_task else ["classify", "detect"]
        problems = []
        statuses = []
        for task in tasks:
            path = f"/v1/vision/{task}?{urlencode({'model': model})}"
            status, body, elapsed = self._timed_post(path, image, _image_type(image))
            if status == 200:
                self._vision_task[model] = task
                inference = float(json.loads(body)["timings_ms"]["inference_ms"])
                return {"ms": elapsed, "inference_ms": inference}
            statuses.append(status)
            problems.append(f"{task}: {status} {body[:200]!r}")
        if all(s == 404 for s in statuses):
            raise NotServed(f"the agent serves no vision model named {model!r}")
        raise AgentError(f"vision on {model!r} failed: {'; '.join(problems)}")

    def rag_query(self, question: str, k: int) -> float:
        status, body, elapsed = self._timed_json(
            "/v1/rag/query", {"question": question, "k": k, "generate": False}
        )
        if status != 200:
            raise AgentError(f"RAG query answered {status}: {body[:300]!r}")
        return elapsed


def _image_type(image: bytes) -> str:
    if image.startswith(b"\x89PNG"):
        return "image/png"
    if image.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"
