"""Fuzz the agent's local API schema with real models behind it.

The app is assembled as the daemon assembles it (``create_local_api`` with the real RAG and
vision routers, grounded chat, and telemetry's middleware and generation observer) over
one release holding the real SmolLM2 chat model, the MiniLM embedder, a RAG index built
with it and a small vision classifier, and served by uvicorn on loopback. Every request
carries the API token; two times in three a generated body names a model the release
really serves, so the fuzz reaches llama.cpp, the embedder, the index and onnxruntime, not
only "model not found". Generation is capped at a few tokens there (the fuzz is about
inputs, not about the model's speed).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import strategies as st

from edge_agent.api import create_local_api, ollama_wire
from edge_agent.api.wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.serving import ReleaseServing
from edge_agent.settings import AgentSettings
from edge_agent.store import sha256_file
from edge_agent.telemetry.agent import TelemetryAgent
from protocol.remote_config import TelemetrySettings
from tests.fuzz.harness import (
    FuzzReport,
    KnownIssue,
    document_body,
    fuzz,
    json_body,
    load_schema,
    model_schema,
)
from tests.live_server import LiveServer
from tests.requirements import LLAMA, MINILM, require_installed, smollm2_gguf_path

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("OUTPOST_FUZZ_AGENT_EXAMPLES", "50"))
SEED = int(os.environ.get("OUTPOST_FUZZ_SEED", "0"))
TOKEN = "fuzz-token-0123456789abcdef"
MAX_TOKENS = 4
COLOUR_SPEC = {
    "task": "classify",
    "preprocess": {"size": [8, 8], "resize": "stretch", "color": "rgb", "layout": "nchw"},
    "labels": ["red", "green", "blue"],
}
# The model each kind of route is asked for when the fuzz names a real one.
REAL_MODELS = {
    "/v1/chat/completions": "smollm2",
    "/v1/completions": "smollm2",
    "/v1/embeddings": "minilm",
    "/api/chat": "smollm2",
    "/api/generate": "smollm2",
    "/api/embed": "minilm",
    "/api/embeddings": "minilm",
    "/api/show": "smollm2",
}
OLLAMA_GENERATION = ("/api/chat", "/api/generate")

STREAMING_ROUTES = ("POST /v1/chat/completions", "POST /v1/completions")


KNOWN: list[KnownIssue] = []  # found by this fuzz and not fixed yet; none now


class Bearer(requests.auth.AuthBase):
    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {TOKEN}"
        return r


def _artifact(name: str, kind: str, fmt: str, path: Path) -> InstalledArtifact:
    return InstalledArtifact(name, kind, fmt, sha256_file(path), path.stat().st_size, path)


def full_release(tmp: Path) -> InstalledRelease:
    """Chat, embeddings, a RAG index and vision in one release, as a device serves them."""
    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.cli import main as rag_cli
    from tests.vision.tiny_models import colour_classifier

    require_installed(*LLAMA)
    require_installed(*MINILM)
    smollm2 = smollm2_gguf_path()
    minilm = cached_gguf()
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "depot.md").write_text("# Depot\n\nThe Rotterdam depot has 38 loading docks.\n")
    (docs / "kiosk.md").write_text("# Kiosk\n\nThe lobby kiosk answers visitors offline.\n")
    index = tmp / "docs.index.sqlite"
    argv = ["--embedding-model", str(minilm), "build-index", str(docs), "--out", str(index)]
    assert rag_cli(argv) == 0
    return InstalledRelease(
        release_id="fuzz-1",
        release_name="fuzz",
        release_version="1",
        assignment_version=1,
        artifacts=(
            _artifact("smollm2", "llm", "gguf", smollm2),
            _artifact("minilm", "embedding", "gguf", minilm),
            _artifact("colour", "vision-classify", "onnx", colour_classifier(tmp / "c.onnx")),
            _artifact("docs", "rag-index", "sqlite", index),
        ),
        config={"vision": {"colour": COLOUR_SPEC}},
    )


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    tmp = tmp_path_factory.mktemp("fuzz-agent")
    settings = AgentSettings(
        state_dir=tmp / "state", n_ctx=512, n_threads=1, max_request_bytes=64 * 1024
    )
    serving = ReleaseServing(ModelRegistry(settings), settings)
    serving.activate(full_release(tmp))
    telemetry = TelemetryAgent(  # measuring, as in the daemon: it sees every input too
        settings,
        device_id="fuzz",
        layers=lambda: (None, TelemetrySettings()),
        release_id=lambda: None,
        models_loaded=lambda: 0,
    )
    app = create_local_api(
        serving.registry,
        settings,
        api_token=TOKEN,
        status=lambda: {"updates": {}},
        extra_routers=[*serving.routers(), telemetry.router()],
        chat_grounding=serving.rag,
        generation_observer=telemetry.observer,
    )
    telemetry.install(app)
    try:
        with LiveServer(app) as server:
            yield app, server.url
    finally:
        serving.close()


def prepare(case: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> requests.auth.AuthBase:
    body = json_body(case)
    model = REAL_MODELS.get(case.path)
    if body is not None and model is not None and draw(st.sampled_from([True, True, False])):
        body["model"] = model
        if case.path in OLLAMA_GENERATION:  # a real generation: a few tokens, not n_ctx
            body["options"] = {"num_predict": draw(st.integers(1, MAX_TOKENS))}
            body.pop("keep_alive", None)  # keep the model loaded: the fuzz is not about loads
        elif case.path.startswith("/v1/") and case.path != "/v1/embeddings":
            body["max_tokens"] = draw(st.integers(1, MAX_TOKENS))
            body.pop("max_completion_tokens", None)
    return Bearer()


def agent_spec(app: Any) -> dict[str, Any]:
    """The app's schema, plus the JSON bodies its model routes parse themselves (to bound
    their size first): FastAPI does not document those, so the fuzz is told them here."""
    spec: dict[str, Any] = copy.deepcopy(app.openapi())
    for path, model in (
        ("/v1/chat/completions", ChatCompletionRequest),
        ("/v1/completions", CompletionRequest),
        ("/v1/embeddings", EmbeddingRequest),
        ("/api/chat", ollama_wire.ChatRequest),
        ("/api/generate", ollama_wire.GenerateRequest),
        ("/api/embed", ollama_wire.EmbedRequest),
        ("/api/embeddings", ollama_wire.EmbeddingsRequest),
        ("/api/show", ollama_wire.ShowRequest),
    ):
        document_body(spec, "post", path, "application/json", model_schema(spec, model))
    return spec


@pytest.mark.slow
def test_fuzz_every_operation_no_5xx_and_answers_match_the_schema(
    agent: tuple[Any, str],
) -> None:
    app, url = agent
    schema = load_schema(agent_spec(app), url)
    report: FuzzReport = fuzz(
        schema, base_url=url, prepare=prepare, examples=EXAMPLES, known=KNOWN, fuzz_seed=SEED
    )
    print(report.summary(), report.table(), sep="\n")
    assert report.operations >= 8, report.summary()  # model, RAG and vision routes
    assert not report.unreached(), report.table()
    assert not report.findings, report.failure_message()


def test_the_schema_documents_streamed_answers(tmp_path: Path) -> None:
    settings = AgentSettings(state_dir=tmp_path)
    serving = ReleaseServing(ModelRegistry(settings), settings)
    app = create_local_api(
        serving.registry,
        settings,
        api_token=TOKEN,
        extra_routers=serving.routers(),
        chat_grounding=serving.rag,
    )
    spec = app.openapi()
    for label in STREAMING_ROUTES:
        method, path = label.split(" ")
        answer = spec["paths"][path][method.lower()]["responses"]["200"]
        assert "text/event-stream" in answer.get("content", {}), label
