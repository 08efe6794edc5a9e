"""The runtime side of the health window, on real models: ``ReleaseServing.smoke`` sends
one real request per model (SmolLM2 chat through llama.cpp, MiniLM embeddings, an ONNX
classifier through the vision pipeline, a retrieval query against a shipped index), and a
release config that breaks serving makes its smoke request fail with the reason."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime import ModelRegistry
from edge_agent.serving import ReleaseServing
from edge_agent.settings import AgentSettings
from edge_agent.store import sha256_file
from edge_agent.updates import Acceptance, SmokeCheck, judge, smoke_checks
from tests.requirements import smollm2_gguf_path

pytestmark = pytest.mark.slow

# A chat template whose generation prompt closes the assistant turn at once: it loads and
# renders, but every reply is empty (the model's next token is end-of-turn).
CLOSED_TURN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "<|im_start|>assistant\n<|im_end|>"
)
COLOUR_SPEC: dict[str, Any] = {
    "task": "classify",
    "preprocess": {"size": [8, 8], "resize": "stretch", "color": "rgb", "layout": "nchw"},
    "labels": ["red", "green", "blue"],
}


def artifact(name: str, kind: str, fmt: str, path: Path) -> InstalledArtifact:
    return InstalledArtifact(name, kind, fmt, sha256_file(path), path.stat().st_size, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, InstalledArtifact]:
    import llama_cpp  # noqa: F401  (the llm extra; make setup installs it: missing is a failure)

    from converters.minilm_gguf import cached_gguf
    from edge_agent.rag.cli import main as rag_cli
    from tests.vision.tiny_models import colour_classifier

    smollm2 = smollm2_gguf_path()  # a skip on a developer's box, a failure under CI
    minilm = cached_gguf()
    tmp = tmp_path_factory.mktemp("smoke-models")
    docs = tmp / "docs"
    docs.mkdir()
    (docs / "depot.md").write_text("# Depot\n\nThe Rotterdam depot has 38 loading docks.\n")
    (docs / "kiosk.md").write_text("# Kiosk\n\nThe lobby kiosk answers visitors offline.\n")
    index = tmp / "docs.index.sqlite"
    argv = ["--embedding-model", str(minilm), "build-index", str(docs), "--out", str(index)]
    assert rag_cli(argv) == 0
    return {
        "smollm2": artifact("smollm2", "llm", "gguf", smollm2),
        "minilm": artifact("minilm", "embedding", "gguf", minilm),
        "colour": artifact("colour", "vision-classify", "onnx", colour_classifier(tmp / "c.onnx")),
        "docs": artifact("docs", "rag-index", "sqlite", index),
    }


def release_of(
    models: Mapping[str, InstalledArtifact], config: Mapping[str, Any], tag: str = "1"
) -> InstalledRelease:
    return InstalledRelease(
        release_id=f"rel-{tag}",
        release_name="smoke",
        release_version=tag,
        assignment_version=int(tag),
        artifacts=tuple(models.values()),
        config={"vision": {"colour": COLOUR_SPEC}, **config},
    )


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[ReleaseServing]:
    settings = AgentSettings(state_dir=tmp_path, n_ctx=512, n_threads=1)
    s = ReleaseServing(ModelRegistry(settings), settings)
    yield s
    s.close()


def test_a_healthy_release_passes_every_smoke_request_in_well_under_a_second_each(
    serving: ReleaseServing, models: dict[str, InstalledArtifact]
) -> None:
    release = release_of(models, {})
    serving.activate(release)
    started = time.perf_counter()
    results = [serving.smoke(release, check) for check in smoke_checks(release)]
    window_s = time.perf_counter() - started

    assert [(r.check.kind, r.error) for r in results] == [
        ("chat", ""),
        ("embedding", ""),
        ("vision", ""),
        ("rag", ""),
    ]
    verdict = judge(smoke_checks(release), results, Acceptance())
    assert verdict.passed, verdict.reason
    assert all(0 < r.elapsed_ms < 1000 for r in results), verdict.reason
    assert window_s < 5, f"the health window took {window_s:.1f} s"


def test_a_chat_template_that_closes_the_assistant_turn_fails_the_chat_smoke_request(
    serving: ReleaseServing, models: dict[str, InstalledArtifact]
) -> None:
    release = release_of(models, {"models": {"smollm2": {"chat_template": CLOSED_TURN_TEMPLATE}}})
    serving.activate(release)  # it loads fine: only a real request shows the problem

    result = serving.smoke(release, SmokeCheck("chat", "smollm2"))

    assert not result.ok
    # the model ends the turn at once: at most a token that decodes to nothing
    assert re.search(
        r"the chat reply to a \d+-token smoke prompt was empty \([01] tokens", result.error
    )
    assert "chat_template" in result.error


def test_labels_that_do_not_match_the_vision_model_fail_the_vision_smoke_request(
    serving: ReleaseServing, models: dict[str, InstalledArtifact]
) -> None:
    release = release_of(models, {})
    spec = {**COLOUR_SPEC, "labels": ["red", "green"]}  # the model gives 3 scores
    release = replace(release, config={"vision": {"colour": spec}})
    serving.activate(release)

    result = serving.smoke(release, SmokeCheck("vision", "colour"))

    assert not result.ok
    assert "model gives 3 scores but 2 labels are declared" in result.error


def test_an_impossible_chat_threshold_fails_a_healthy_release(
    serving: ReleaseServing, models: dict[str, InstalledArtifact]
) -> None:
    release = release_of(models, {"acceptance": {"max_smoke_ms": {"chat": 1}}})
    serving.activate(release)
    check = SmokeCheck("chat", "smollm2")

    verdict = judge(
        [check], [serving.smoke(release, check)], Acceptance.from_release_config(release.config)
    )

    assert not verdict.passed
    assert "over the release's acceptance.max_smoke_ms.chat of 1 ms" in verdict.reason


def test_a_smoke_request_only_counts_for_the_release_actually_served(
    serving: ReleaseServing, models: dict[str, InstalledArtifact]
) -> None:
    serving.activate(release_of(models, {}, tag="1"))

    result = serving.smoke(release_of(models, {}, tag="2"), SmokeCheck("chat", "smollm2"))

    assert result.error == "the runtime serves rel-1, not rel-2"
