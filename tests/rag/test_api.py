"""The RAG routes inside the real local API (token check, error handler, model registry),
served by uvicorn on loopback and called over HTTP.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.api import create_local_api
from edge_agent.rag.api import rag_router
from edge_agent.rag.release import ReleaseRagEngines
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.settings import AgentSettings
from tests.live_server import LiveServer

from .test_loaders import pdf_with_text

pytestmark = pytest.mark.slow

TOKEN = "rag-test-token-0123456789"
UPLOAD_CAP = 2_000_000


def artifact(name: str, kind: str, fmt: str, path: Path) -> InstalledArtifact:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return InstalledArtifact(name, kind, fmt, digest, path.stat().st_size, path)


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    minilm_gguf: Path,
    smollm_gguf: Path,
    handbook_index: Path,
) -> Iterator[tuple[str, Path]]:
    state = tmp_path_factory.mktemp("agent-state")
    settings = AgentSettings(state_dir=state, n_ctx=2048)
    release = InstalledRelease(
        release_id="rel-1",
        release_name="handbook",
        release_version="1.0.0",
        assignment_version=1,
        artifacts=(
            artifact("minilm", "embedding", "gguf", minilm_gguf),
            artifact("smollm2", "llm", "gguf", smollm_gguf),
            artifact("handbook-index", "rag-index", "sqlite", handbook_index),
        ),
    )
    registry = ModelRegistry(settings)
    registry.activate(release)
    engines = ReleaseRagEngines(registry, state)
    app = create_local_api(
        registry,
        settings,
        api_token=TOKEN,
        extra_routers=[rag_router(engines, max_upload_bytes=UPLOAD_CAP)],
    )
    # lifespan "auto", as uvicorn runs the agent's app
    with LiveServer(app, lifespan="auto", start_timeout_s=20) as server:
        yield server.url, state
    engines.close()
    registry.close()


@pytest.fixture
def client(api: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api[0], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    ) as c:
        yield c


def test_rag_routes_need_the_api_token(api: tuple[str, Path]) -> None:
    response = httpx.post(f"{api[0]}/v1/rag/query", json={"question": "battery"})
    assert response.status_code == 401


def test_query_answers_with_verified_span_citations(client: httpx.Client) -> None:
    response = client.post(
        "/v1/rag/query",
        json={
            "question": "How many loading docks does the Rotterdam depot have?",
            "generate": False,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["abstained"] is False
    [citation] = body["citations"]
    assert citation["document"] == "depots.md" and "38" in citation["quote"]
    assert citation["end"] - citation["start"] == len(citation["quote"])


def test_sources_carry_their_text_and_citations_point_inside_it(client: httpx.Client) -> None:
    """A client can show what was retrieved, and where the quote sits in it, without the
    index: ``quote == sources[n - 1].text[source_start:source_end]``.
    """
    body = client.post(
        "/v1/rag/query",
        json={
            "question": "How many loading docks does the Rotterdam depot have?",
            "generate": False,
        },
    ).json()
    assert body["sources"] and all(s["text"] for s in body["sources"])
    for s in body["sources"]:
        assert len(s["text"]) == s["end"] - s["start"]
    [citation] = body["citations"]
    source = body["sources"][citation["source"] - 1]
    assert source["number"] == citation["source"]
    quoted = source["text"][citation["source_start"] : citation["source_end"]]
    assert quoted == citation["quote"] and "38" in quoted
    assert citation["start"] - source["start"] == citation["source_start"]


def test_query_with_the_chat_model_answers_with_citations(client: httpx.Client) -> None:
    """The handbook states the range: the (greedy) chat model answers, citing it."""
    response = client.post(
        "/v1/rag/query",
        json={
            "question": "What temperature range must pharmaceutical shipments stay in?",
            "max_tokens": 80,
        },
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["abstained"] is False, body["reason"]
    assert body["answer"] and not body["answer"].startswith("I don't know")
    assert body["citations"], body["answer"]
    assert "cold-chain-thresholds.md" in {c["document"] for c in body["citations"]}
    for c in body["citations"]:
        assert c["quote"] and c["end"] - c["start"] == len(c["quote"]), c


def test_an_unanswerable_question_is_abstained_on(client: httpx.Client) -> None:
    body = client.post(
        "/v1/rag/query", json={"question": "Who won the football world cup in 1998?"}
    ).json()
    assert body["abstained"] is True and body["citations"] == []
    assert "football" in body["reason"]


def test_ingest_json_then_query_it_with_a_filter(client: httpx.Client) -> None:
    response = client.post(
        "/v1/rag/ingest",
        json={
            "id": "aarhus-rules.md",
            "text": "# Aarhus rules\n\nAt the Aarhus depot, forklifts stop at the yellow line.",
            "media_type": "text/markdown",
            "metadata": {"depot": "aarhus"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "added"
    body = client.post(
        "/v1/rag/query",
        json={
            "question": "Where do forklifts stop?",
            "filters": {"depot": "aarhus"},
            "generate": False,
        },
    ).json()
    assert [s["document"] for s in body["sources"]] == ["aarhus-rules.md"]
    docs = client.get("/v1/rag/documents").json()["data"]
    assert {"id": "aarhus-rules.md", "metadata": {"depot": "aarhus"}}.items() <= {
        k: v for d in docs if d["id"] == "aarhus-rules.md" for k, v in d.items()
    }.items()


def test_ingest_multipart_and_raw_uploads(client: httpx.Client) -> None:
    multipart = client.post(
        "/v1/rag/ingest",
        files={"file": ("gdansk.html", b"<p>Gdansk trucks leave at 05:30.</p>", "text/html")},
        data={"metadata": json.dumps({"depot": "gdansk"})},
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["document"] == "gdansk.html"
    raw = client.post(
        "/v1/rag/ingest?id=porto-manual.pdf",
        content=pdf_with_text("Porto trucks are washed every Friday"),
        headers={"Content-Type": "application/pdf"},
    )
    assert raw.status_code == 200, raw.text
    again = client.post(
        "/v1/rag/ingest?id=porto-manual.pdf",
        content=pdf_with_text("Porto trucks are washed every Friday"),
        headers={"Content-Type": "application/pdf"},
    )
    assert again.json()["status"] == "unchanged"


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        ({"file": ("empty.txt", b"", "text/plain")}, 400, "empty"),
        ({"file": ("tool.txt", b"\x7fELF\x00\x00" * 100, "text/plain")}, 415, "binary"),
        ({"file": ("photo.png", b"\x89PNG....", "image/png")}, 415, "image/png"),
        ({"file": ("broken.pdf", b"%PDF-1.4 \x00\x01 broken", "application/pdf")}, 400, "PDF"),
    ],
)
def test_bad_files_get_a_clear_4xx(
    client: httpx.Client, files: dict[str, tuple[str, bytes, str]], status: int, words: str
) -> None:
    before = client.get("/v1/rag/status").json()
    response = client.post("/v1/rag/ingest", files=files)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert client.get("/v1/rag/status").json() == before


def test_bad_queries_get_a_clear_400(client: httpx.Client) -> None:
    empty = client.post("/v1/rag/query", json={"question": ""})
    assert empty.status_code == 400 and "question" in empty.json()["error"]["message"]
    too_many = client.post("/v1/rag/query", json={"question": "x", "k": 500})
    assert too_many.status_code == 400 and "k" in too_many.json()["error"]["param"]
    bad_filter = client.post("/v1/rag/query", json={"question": "battery", "filters": {"a'b": 1}})
    assert bad_filter.status_code == 400 and "filter key" in bad_filter.text


def test_a_ten_thousand_word_query_is_answered(client: httpx.Client) -> None:
    question = " ".join(["Which depot has a pharmaceutical cold room?"] * 1430)
    assert len(question.split()) >= 10_000
    response = client.post("/v1/rag/query", json={"question": question, "generate": False})
    assert response.status_code == 200, response.text
    assert response.json()["sources"][0]["document"] == "depots.md"


def _raw_exchange(port: int, head: bytes, body_parts: Iterator[bytes]) -> tuple[int, int]:
    """Send a request by hand; return (status, body bytes sent before the answer came)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(0.01)
        answer = b""
        for part in body_parts:
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(part)
        sock.settimeout(30)
        while b"\r\n" not in answer:
            answer += sock.recv(65536)
    return int(answer.split(b" ")[1]), sent


def test_a_500_mb_upload_is_refused_with_413_without_being_read(api: tuple[str, Path]) -> None:
    port = int(api[0].rsplit(":", 1)[1])
    head = (
        f"POST /v1/rag/ingest?id=huge.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
        "\r\nContent-Type: text/plain\r\nContent-Length: 500000000\r\n\r\n"
    ).encode()
    status, sent = _raw_exchange(port, head, iter([b"a" * 1_000_000] * 500))
    assert status == 413
    assert sent < 50_000_000


def test_a_chunked_upload_is_cut_off_at_the_limit(api: tuple[str, Path]) -> None:
    port = int(api[0].rsplit(":", 1)[1])
    head = (
        f"POST /v1/rag/ingest?id=huge.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
        "\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n" % 500_000 + b"a" * 500_000 + b"\r\n"
    status, sent = _raw_exchange(port, head, iter([chunk] * 1000))
    assert status == 413
    assert sent < 100 * len(chunk)


def test_the_shipped_index_artifact_is_never_modified(
    client: httpx.Client, handbook_index: Path, api: tuple[str, Path]
) -> None:
    before = hashlib.sha256(handbook_index.read_bytes()).hexdigest()
    client.post("/v1/rag/ingest", json={"id": "note.txt", "text": "A note on tyre pressure."})
    assert hashlib.sha256(handbook_index.read_bytes()).hexdigest() == before
    status = client.get("/v1/rag/status").json()
    assert status["index"].startswith(str(api[1]))
