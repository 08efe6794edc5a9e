"""Queueing, client disconnects and release swaps, against a live API on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from edge_agent.api import create_local_api
from edge_agent.release import InstalledArtifact
from edge_agent.runtime import (
    ChatTurn,
    ModelOptions,
    ModelRegistry,
    Sampling,
    TextGenerator,
    TextPiece,
)
from edge_agent.runtime.llama import LlamaTextGenerator
from tests.agent_api.conftest import (
    EMBEDDER,
    LLM,
    TOKEN,
    Served,
    release,
    settings_for_tests,
)
from tests.live_server import LiveServer

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG_CHAT = {
    "model": LLM,
    "messages": [{"role": "user", "content": "Count from 1 to 1000, one number per line."}],
    "max_tokens": 400,
    "temperature": 0,
    "stream": True,
}


def wait_until(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def admitted(registry: ModelRegistry, name: str) -> int:
    return next(m.admitted for m in registry.models() if m.name == name)


@pytest.fixture
def one_slot(smollm2: Path) -> Iterator[tuple[ModelRegistry, str]]:
    """A separate agent whose model admits one request at a time (max_queue=1)."""
    settings = settings_for_tests(max_queue=1)
    registry = ModelRegistry(settings)
    registry.activate(release("q1", {LLM: ("llm", smollm2)}))
    registry.warm()
    with LiveServer(create_local_api(registry, settings, api_token=TOKEN)) as server:
        yield registry, server.url
    registry.close()


def test_full_queue_answers_503_busy_at_once_and_frees_up(
    one_slot: tuple[ModelRegistry, str],
) -> None:
    _, url = one_slot
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", headers=AUTH, json=LONG_CHAT) as long:
            assert long.status_code == 200
            lines = long.iter_lines()
            assert next(lines).startswith("data: ")  # the first token is out: it is running
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
            with pytest.raises(openai.InternalServerError) as caught:
                client.chat.completions.create(
                    model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
                )
            assert caught.value.status_code == 503
            assert "busy" in str(caught.value) and "max_queue=1" in str(caught.value)
            assert caught.value.response.headers["retry-after"] == "1"
            still = [line for line in lines if line.startswith("data: ")]
            assert still[-1] == "data: [DONE]"  # the running request was not disturbed
        done = http.post(
            "/v1/completions",
            headers=AUTH,
            json={"model": LLM, "prompt": "Hello", "max_tokens": 2},
        )
        assert done.status_code == 200


def test_client_disconnect_stops_generation_and_frees_the_model(
    one_slot: tuple[ModelRegistry, str],
) -> None:
    registry, url = one_slot
    endless = {**LONG_CHAT, "max_tokens": 100_000}  # would run until the context is full
    with httpx.Client(base_url=url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", headers=AUTH, json=endless) as stream:
            lines = stream.iter_lines()
            for _ in range(3):
                next(lines)
            assert admitted(registry, LLM) == 1
        # the connection is closed mid-stream: the agent must notice and stop generating
        assert wait_until(lambda: admitted(registry, LLM) == 0, 5.0)
        reply = http.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={**LONG_CHAT, "stream": False, "max_tokens": 3},
        )
        assert reply.status_code == 200, reply.text


def test_new_release_swaps_models_while_a_request_runs_on_the_old_one(served: Served) -> None:
    registry = served.registry
    smollm2 = served.release.artifacts[0].path
    minilm = next(a.path for a in served.release.artifacts if a.name == EMBEDDER)
    second = release("r2", {"smollm2-next": ("llm", smollm2), EMBEDDER: ("embedding", minilm)})
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=TOKEN, max_retries=0)
    old_stream = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        max_tokens=40,
        temperature=0,
        stream=True,
    )
    try:
        chunks = iter(old_stream)
        first = next(chunks)
        registry.activate(second)
        # an unchanged artifact (same name, file, hash and options) stays loaded
        assert next(m for m in registry.models() if m.name == EMBEDDER).loaded
        assert {m.id for m in client.models.list()} == {"smollm2-next", EMBEDDER}
        # the request admitted before the swap finishes on the old model
        rest = list(chunks)
        text = (first.choices[0].delta.content or "") + "".join(
            c.choices[0].delta.content or "" for c in rest if c.choices
        )
        assert rest[-1].choices[0].finish_reason in ("stop", "length")
        assert len(text) > 20
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        reply = client.chat.completions.create(
            model="smollm2-next",
            messages=[{"role": "user", "content": "What color is the sky?"}],
            max_tokens=8,
            temperature=0,
        )
        assert reply.choices[0].message.content
    finally:
        registry.activate(served.release)
    assert {m.id for m in client.models.list()} == {LLM, EMBEDDER}


class MeasuredGenerator:
    """The real llama.cpp generator, recording when each generation starts and ends."""

    def __init__(self, model: TextGenerator, lock: threading.Lock) -> None:
        self._model = model
        self._lock = lock
        self.running = 0
        self.peak = 0
        self.generations = 0

    @property
    def context_length(self) -> int:
        return self._model.context_length

    def _measured(self, pieces: Iterator[TextPiece]) -> Iterator[TextPiece]:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.generations += 1
        try:
            for piece in pieces:
                time.sleep(0.01)  # widen the window in which an overlap would show
                yield piece
        finally:
            with self._lock:
                self.running -= 1

    def chat(
        self,
        turns: Sequence[ChatTurn],
        sampling: Sampling,
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> Iterator[TextPiece]:
        return self._measured(self._model.chat(turns, sampling, tools))

    def complete(self, prompt: str, sampling: Sampling) -> Iterator[TextPiece]:
        return self._measured(self._model.complete(prompt, sampling))

    def close(self) -> None:
        self._model.close()


def test_requests_beyond_the_running_one_wait_in_the_queue(smollm2: Path) -> None:
    """max_queue=4: four concurrent requests all succeed, one generation at a time."""
    measured: list[MeasuredGenerator] = []
    lock = threading.Lock()

    def load(artifact: InstalledArtifact, options: ModelOptions) -> MeasuredGenerator:
        measured.append(MeasuredGenerator(LlamaTextGenerator.load(artifact, options), lock))
        return measured[-1]

    settings = settings_for_tests(max_queue=4)
    registry = ModelRegistry(settings, loaders={"llm": load})
    registry.activate(release("q4", {LLM: ("llm", smollm2)}))
    registry.warm()  # loads the model and runs it once (one token)
    warm_up = measured[0].generations
    results: list[int] = []
    start = threading.Barrier(4)

    def ask(stream: bool) -> None:
        body = {"model": LLM, "prompt": "Once upon a time", "max_tokens": 8, "stream": stream}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            start.wait()
            with http.stream("POST", "/v1/completions", headers=AUTH, json=body) as r:
                r.read()
                results.append(r.status_code)

    try:
        with LiveServer(create_local_api(registry, settings, api_token=TOKEN)) as server:
            threads = [threading.Thread(target=ask, args=(i % 2 == 0,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        registry.close()
    assert results == [200, 200, 200, 200]
    [model] = measured
    assert model.generations - warm_up == 4
    assert model.peak == 1, f"{model.peak} generations ran at the same time on one model"


def test_completion_stream_is_server_sent_events_ending_in_done(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as http:
        body = {"model": LLM, "prompt": "Hi", "max_tokens": 3, "stream": True}
        with http.stream("POST", "/v1/completions", headers=AUTH, json=body) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = [line for line in stream.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    for event in events[:-1]:
        assert event.startswith("data: ")
        assert json.loads(event[len("data: ") :])["object"] == "text_completion"
