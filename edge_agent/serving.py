"""Everything a release serves, activated as one unit: language and embedding models
(the registry), vision models and the RAG index.

The update loop and startup hand a verified release to :class:`ReleaseServing`; it checks
what the runtime needs before anything changes (vision specs, the index/embedding-model
pair), then switches the registry, which the vision and RAG providers follow. A release
that fails here is rolled back by the caller as a whole.

:meth:`ReleaseServing.smoke` is the runtime side of the update loop's health window: one
small request per model, through the same objects the local API calls.
:meth:`ReleaseServing.observer` is the runtime side of its bounded acceptance suite.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from fastapi import APIRouter

from edge_agent.errors import NoModelError
from edge_agent.rag.api import rag_router
from edge_agent.rag.release import ReleaseRagEngines, check_release_index
from edge_agent.release import InstalledRelease
from edge_agent.remote_config.release_defaults import ReleaseDefaults, check_release_prompts
from edge_agent.runtime import ChatTurn, ModelRegistry, Sampling, TextGenerator, join_pieces
from edge_agent.runtime.memory import process_memory
from edge_agent.settings import AgentSettings
from edge_agent.updates.acceptance import NotServed
from edge_agent.updates.health import SmokeCheck, SmokeResult
from edge_agent.vision.api import vision_router
from edge_agent.vision.decode import decode_image
from edge_agent.vision.model import VisionModel
from edge_agent.vision.provider import ReleaseVisionModels, vision_entries
from edge_agent.vision.spec import VISION_TASK_OF_KIND, VisionTask

T = TypeVar("T")

SMOKE_CHAT = (ChatTurn("user", "Reply with one word: are you ready?"),)
SMOKE_SAMPLING = Sampling(max_tokens=4, temperature=0.0, seed=0)
SMOKE_SENTENCE = "The device checks that its new release answers before it commits to it."
SMOKE_QUESTION = "What do these documents say?"


class SmokeFailed(Exception):
    """A smoke request answered, but not as a healthy model would (the message says how);
    ``elapsed_ms``: how long the request took, when it was sent."""

    def __init__(self, message: str, elapsed_ms: float | None = None) -> None:
        super().__init__(message)
        self.elapsed_ms = elapsed_ms


class ActiveVisionModels:
    """Vision models of the registry's active release, rebuilt when the release changes."""

    def __init__(self, registry: ModelRegistry, settings: AgentSettings) -> None:
        self._registry = registry
        self._settings = settings
        self._lock = threading.Lock()
        self._current: ReleaseVisionModels | None = None

    def vision_model(self, name: str | None, task: VisionTask) -> VisionModel:
        release = self._registry.release
        if release is None:
            raise NoModelError("no verified release is installed yet; vision is not available")
        with self._lock:
            if self._current is None or self._current.release is not release:
                self._current = ReleaseVisionModels(
                    release,
                    n_threads=self._settings.n_threads,
                    max_in_flight=self._settings.max_queue,
                )
            current = self._current
        return current.vision_model(name, task)


class ReleaseServing:
    """Activates a release in every runtime at once, and builds the API routes over them."""

    def __init__(self, registry: ModelRegistry, settings: AgentSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.vision = ActiveVisionModels(registry, settings)
        self.rag = ReleaseRagEngines(registry, settings.state_dir)
        self.activation_ms: tuple[str, float] | None = None  # (release, load and warm-up)

    def activate(self, release: InstalledRelease) -> None:
        """Check, switch and load; raises (changing nothing) if the release cannot be served."""
        vision_entries(release)  # every vision artifact has a valid spec
        check_release_index(release)  # the index was built with the shipped embedding model
        check_release_prompts(release)  # its prompt pack and policy bundle fit their schema
        started = time.perf_counter()
        self.registry.activate(release)
        self.registry.warm()
        self.activation_ms = (release.release_id, _ms_since(started))

    def deactivate(self) -> None:
        """Serve no release (a first release that failed its health window)."""
        self.registry.deactivate()

    # --- health window (edge_agent.updates.HealthProbe) ---------------------------------

    def smoke(self, release: InstalledRelease, check: SmokeCheck) -> SmokeResult:
        """Send one smoke request to the active release; never raises. ``elapsed_ms`` is
        the request alone: a model that still has to load is loaded first, untimed."""
        started = time.perf_counter()
        try:
            if self.registry.release != release:
                active = self.registry.release
                raise SmokeFailed(
                    f"the runtime serves {active.release_id if active else 'no release'},"
                    f" not {release.release_id}"
                )
            run = {
                "chat": self._smoke_chat,
                "embedding": self._smoke_embedding,
                "vision": self._smoke_vision,
                "rag": self._smoke_rag,
            }[check.kind]
            elapsed_ms = run(release, check.artifact)
        except SmokeFailed as e:
            elapsed = _ms_since(started) if e.elapsed_ms is None else e.elapsed_ms
            return SmokeResult(check, elapsed, str(e))
        except Exception as e:
            return SmokeResult(check, _ms_since(started), f"{type(e).__name__}: {e}")
        return SmokeResult(check, elapsed_ms)

    def _wait(self, future: Future[T], what: str) -> T:
        timeout = self.settings.health_check_timeout_seconds
        try:
            return future.result(timeout=timeout)
        except FutureTimeout as e:
            raise SmokeFailed(f"{what} did not finish within {timeout:g} s") from e

    def _smoke_chat(self, release: InstalledRelease, name: str) -> float:
        pack, _ = ReleaseDefaults().of(release)
        turns: tuple[ChatTurn, ...] = SMOKE_CHAT
        if pack is not None and pack.system_prompt:  # what a chat without one gets
            turns = (ChatTurn("system", pack.system_prompt), *SMOKE_CHAT)
        with self.registry.lease_generator(name) as lease:
            self._wait(lease.run(lambda _m: None), "loading the model")
            started = time.perf_counter()
            reply = self._wait(
                lease.run(lambda m: join_pieces(m.chat(turns, SMOKE_SAMPLING))),
                "a chat completion",
            )
            elapsed = _ms_since(started)
        if reply.completion_tokens < 1 or not reply.text.strip():
            raise SmokeFailed(
                f"the chat reply to a {reply.prompt_tokens}-token smoke prompt was empty"
                f" ({reply.completion_tokens} tokens, finish_reason {reply.finish_reason!r});"
                " check chat_template / chat_format of this model in the release config",
                elapsed,
            )
        return elapsed

    def _smoke_embedding(self, _release: InstalledRelease, name: str) -> float:
        with self.registry.lease_embedder(name) as lease:
            dimensions = self._wait(lease.run(lambda m: m.dimensions), "loading the model")
            started = time.perf_counter()
            out = self._wait(lease.run(lambda m: m.embed([SMOKE_SENTENCE])), "an embedding")
            elapsed = _ms_since(started)
        shapes = [len(v) for v in out.vectors]
        if shapes != [dimensions]:
            raise SmokeFailed(
                f"embedding one sentence gave vectors of dimensions {shapes}, expected"
                f" [{dimensions}]",
                elapsed,
            )
        vector = out.vectors[0]
        if not all(math.isfinite(x) for x in vector):
            raise SmokeFailed(
                "the embedding of a smoke sentence has NaN or infinite values", elapsed
            )
        if not any(vector):
            raise SmokeFailed("the embedding of a smoke sentence is all zeros", elapsed)
        return elapsed

    def _smoke_vision(self, release: InstalledRelease, name: str) -> float:
        kind = next(a.kind for a in release.artifacts if a.name == name)
        task = VISION_TASK_OF_KIND[kind]
        model = self.vision.vision_model(name, task)  # loads it on first use
        png = _smoke_png()
        started = time.perf_counter()
        pixels = decode_image(png, max_pixels=self.settings.max_image_pixels).pixels
        if task == "classify":
            predictions = model.classify(pixels, 1).predictions
            elapsed = _ms_since(started)
            if not predictions or not all(math.isfinite(p.score) for p in predictions):
                raise SmokeFailed(f"classifying a test image gave {predictions!r}", elapsed)
            return elapsed
        detections = model.detect(pixels).detections
        elapsed = _ms_since(started)
        if not all(math.isfinite(v) for d in detections for v in (d.score, *d.box)):
            raise SmokeFailed("detecting on a test image gave non-finite boxes or scores", elapsed)
        return elapsed

    def _smoke_rag(self, _release: InstalledRelease, _name: str) -> float:
        engine = self.rag()  # opens the release's index with its embedding model
        started = time.perf_counter()
        sources = engine.retrieve(SMOKE_QUESTION, k=1)
        elapsed = _ms_since(started)
        chunks = engine.index.counts()["chunks"]
        if chunks and not sources:
            raise SmokeFailed(
                f"a retrieval query found nothing in an index of {chunks} chunks", elapsed
            )
        return elapsed

    # --- the health window's acceptance suite (edge_agent.updates.AcceptanceProbe) -------

    def observer(
        self, release: InstalledRelease, inputs: AcceptanceInputs | None = None
    ) -> OnDeviceObserver:
        return OnDeviceObserver(self, release, inputs or AcceptanceInputs())

    def routers(self) -> list[APIRouter]:
        return [
            vision_router(
                self.vision,
                max_upload_bytes=self.settings.max_upload_bytes,
                max_image_pixels=self.settings.max_image_pixels,
            ),
            rag_router(self.rag, max_upload_bytes=self.settings.max_upload_bytes),
        ]

    def close(self) -> None:
        self.rag.close()
        self.registry.close()


@dataclass(frozen=True)
class AcceptanceInputs:
    """What the acceptance queries send: the health window's built-in inputs by default
    (the smoke prompt, sentence and question, a generated 480x480 image); the
    ``device_tests`` suite passes its versioned workload instead."""

    prompts: tuple[str, ...] = (SMOKE_CHAT[0].content,)
    max_tokens: int = 16
    sentences: tuple[str, ...] = (SMOKE_SENTENCE,)
    questions: tuple[str, ...] = (SMOKE_QUESTION,)
    images: Callable[[str], tuple[bytes, ...]] | None = None  # by model name
    rag_k: int = 5


class OnDeviceObserver:
    """One acceptance query at a time, through the same objects the local API calls (an
    :class:`~edge_agent.updates.acceptance.Observer`)."""

    def __init__(
        self, serving: ReleaseServing, release: InstalledRelease, inputs: AcceptanceInputs
    ) -> None:
        self._serving = serving
        self._release = release
        self._inputs = inputs
        self._sampling = Sampling(max_tokens=inputs.max_tokens, temperature=0.0, seed=0)
        self._generated: tuple[bytes, ...] | None = None

    def _first(self, kind: str) -> str:
        for artifact in self._release.artifacts:
            if artifact.kind == kind:
                return artifact.name
        raise NotServed(f"the release serves no {kind} model")

    def observe(self, kind: str, model: str | None, i: int) -> Mapping[str, float]:
        s, inputs = self._serving, self._inputs
        if kind == "chat":
            prompt = inputs.prompts[i % len(inputs.prompts)]
            return self._chat(self._first("llm"), prompt)
        if kind == "embedding":
            sentence = inputs.sentences[i % len(inputs.sentences)]
            with s.registry.lease_embedder(self._first("embedding")) as lease:
                started = time.perf_counter()
                s._wait(lease.run(lambda m: m.embed([sentence])), "an embedding")
                return {"ms": _ms_since(started)}
        if kind == "vision":
            return self._vision(model, i)
        if kind == "rag":
            self._first("rag-index")
            engine = s.rag()
            started = time.perf_counter()
            engine.retrieve(inputs.questions[i % len(inputs.questions)], k=inputs.rag_k)
            return {"ms": _ms_since(started)}
        if kind == "memory":
            return {"peak_rss_mb": process_memory()["peak_rss_mb"]}
        if kind == "cold_start" and s.activation_ms is not None:
            release_id, ms = s.activation_ms
            if release_id == self._release.release_id:
                return {"ms": ms}
        raise NotServed(f"the agent cannot measure {kind} here")

    def _chat(self, name: str, prompt: str) -> dict[str, float]:
        turns = (ChatTurn("user", prompt),)

        def timed(m: TextGenerator) -> dict[str, float]:
            started = time.perf_counter()
            first = last = 0.0
            tokens = 0
            for piece in m.chat(turns, self._sampling):
                if piece.text:
                    last = time.perf_counter()
                    first = first or last
                tokens = piece.completion_tokens or tokens
            if not first:
                raise SmokeFailed("a chat reply streamed no text")
            out = {"ttft_ms": (first - started) * 1e3}
            if tokens > 1 and last > first:
                out["decode_tokens_per_s"] = (tokens - 1) / (last - first)
            return out

        with self._serving.registry.lease_generator(name) as lease:
            return self._serving._wait(lease.run(timed), "a chat completion")

    def _vision(self, name: str | None, i: int) -> dict[str, float]:
        kinds = {a.name: a.kind for a in self._release.artifacts}
        if name not in kinds or kinds[name] not in VISION_TASK_OF_KIND:
            raise NotServed(f"the release serves no vision model named {name!r}")
        task = VISION_TASK_OF_KIND[kinds[name]]
        model = self._serving.vision.vision_model(name, task)
        if self._inputs.images is not None:
            images = self._inputs.images(name)
        else:
            self._generated = self._generated or (_smoke_png(480),)
            images = self._generated
        started = time.perf_counter()
        pixels = decode_image(
            images[i % len(images)], max_pixels=self._serving.settings.max_image_pixels
        ).pixels
        run = model.classify(pixels, 1) if task == "classify" else model.detect(pixels)
        return {"ms": _ms_since(started), "inference_ms": run.times.inference_ms}


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def _smoke_png(size: int = 96) -> bytes:
    """A small generated test image (a gradient with a disc), PNG-encoded like an upload."""
    import cv2  # only a release with a vision model gets here

    y, x = np.mgrid[0:size, 0:size]
    image = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    image = image.astype(np.uint8)
    cv2.circle(image, (size // 2, size // 2), size // 4, (240, 240, 240), -1)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise SmokeFailed("OpenCV could not encode the test image")
    return bytes(encoded.tobytes())
