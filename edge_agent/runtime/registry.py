"""The models of the active release, served by artifact name.

Each model has its own worker threads (as many jobs at once as the loaded model declares:
a batched chat model its ``n_parallel`` slots, anything else one, since a llama.cpp
context is not thread-safe) and a bounded admission count: a request is admitted while
fewer than ``max_queue`` requests (the running ones included) hold the model, and is
refused with BusyError otherwise, at once. Models load lazily on the first job (or on
``warm``), unload after ``idle_unload_seconds`` without use, and are swapped atomically
by ``activate``: requests already admitted on an old model finish on it, and the old
model is freed when the last of them is done. Under ``memory_budget_mb`` a load first
unloads idle models, least recently used first, so the estimates never exceed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from edge_agent.errors import (
    BadRequestError,
    BusyError,
    NoModelError,
    NotFoundError,
    ResourceExhaustedError,
)
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.runtime.backends import (
    ChatTurn,
    Embedder,
    GeneratedText,
    LoadedModel,
    ModelLoader,
    ModelOptions,
    Sampling,
    TextGenerator,
    join_pieces,
    join_until_cancelled,
)
from edge_agent.runtime.memory_budget import MemoryEstimate, Resident, estimate_file, plan_unloads
from edge_agent.runtime.options import resolve_options
from edge_agent.settings import AgentSettings

M = TypeVar("M", bound=LoadedModel)
T = TypeVar("T")

LLM = "llm"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class ServedModel:
    """What the registry serves under one name, for listings and status."""

    name: str
    kind: str
    format: str
    sha256: str
    release_id: str
    loaded: bool
    admitted: int
    engine: dict[str, Any] = field(default_factory=dict)
    """Counters of the model's engine while loaded (batched chat models: slots, prompt
    tokens evaluated and taken from the prompt cache)."""


def is_idle(
    *, loaded: bool, admitted: int, last_used: float, now: float, idle_after: float
) -> bool:
    """Whether a model should be unloaded: loaded, unused, and quiet for ``idle_after`` s."""
    return idle_after > 0 and loaded and admitted == 0 and now - last_used >= idle_after


class _Slot:
    """One model of one release: its worker threads and, once loaded, the backend.

    A model runs as many jobs at once as it declares (``parallel``: the batched chat
    engine's slots; 1 otherwise, llama.cpp contexts are not thread-safe); the worker pool
    is sized for the most a kind may declare. Loading and unloading wait for the jobs.
    """

    def __init__(
        self,
        artifact: InstalledArtifact,
        options: ModelOptions,
        loader: ModelLoader,
        release_id: str,
        clock: Callable[[], float],
        before_load: Callable[[_Slot], None] = lambda _slot: None,
    ) -> None:
        self.artifact = artifact
        self.options = options
        self.release_id = release_id
        self._loader = loader
        self._clock = clock
        self._before_load = before_load
        workers = options.n_parallel if artifact.kind == LLM else 1
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix=f"model-{artifact.name}"
        )
        self._cond = threading.Condition()
        self._model: LoadedModel | None = None  # guarded by _cond
        self._active = 0  # jobs running on the model, guarded by _cond
        self._parallel = 1
        self.loaded = False
        self.admitted = 0  # guarded by the registry's lock
        self.retired = False
        self.last_used = clock()
        self.keep_alive: float | None = None  # s after last use; None: idle_unload_seconds
        self.estimate: MemoryEstimate | None = None
        self.reserved = False  # counted in the memory budget (loading or loaded)

    @property
    def in_use(self) -> int:
        """Requests that hold the model, plus jobs running on it that hold no admission
        (a warm-up). ``_active`` is read without ``_cond``: a load holds that lock for its
        whole length, and an int is read whole."""
        return self.admitted + self._active

    def submit(self, job: Callable[[Any], T]) -> Future[T]:
        return self._executor.submit(self._run, job)

    def _run(self, job: Callable[[Any], T]) -> T:
        with self._cond:
            if self._model is None:
                self._before_load(self)  # may unload idle models for the memory budget
                try:
                    self._model = self._loader(self.artifact, self.options)
                finally:
                    self.reserved = self._model is not None
                self._parallel = max(1, int(getattr(self._model, "parallel", 1)))
                self.loaded = True
            while self._active >= self._parallel:
                self._cond.wait()
            self._active += 1
            model = self._model
        try:
            return job(model)
        finally:
            self.last_used = self._clock()
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def stats(self) -> dict[str, Any]:
        """The loaded model's engine counters (prompt tokens evaluated...), if it has any."""
        with self._cond:
            model = self._model
        stats = getattr(model, "engine_stats", None)
        return asdict(stats()) if callable(stats) else {}

    def unload(self) -> None:
        """Unload now (waits for running jobs); a later job loads the model again."""
        self._unload_now()

    def _unload_now(self) -> None:
        with self._cond:
            while self._active > 0:
                self._cond.wait()
            model, self._model = self._model, None
            self.loaded = False
            if model is not None:
                model.close()
            self.reserved = False

    def free(self) -> None:
        """Unload after every job already submitted, then stop the worker threads."""
        with contextlib.suppress(RuntimeError):
            self._executor.submit(self._unload_now)
        self._executor.shutdown(wait=False)


class ModelLease(Generic[M]):
    """An admitted request's hold on one model. Release it when the request is done
    (``with`` does it); jobs run on the model's own thread, one at a time."""

    def __init__(self, registry: ModelRegistry, slot: _Slot) -> None:
        self._registry = registry
        self._slot = slot
        self._released = False

    @property
    def name(self) -> str:
        return self._slot.artifact.name

    @property
    def release_id(self) -> str:
        return self._slot.release_id

    def run(self, job: Callable[[M], T]) -> Future[T]:
        """Run ``job(model)`` on the model's thread, loading the model first if needed."""
        if self._released:
            raise RuntimeError("lease already released")
        return self._slot.submit(job)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._registry._release_slot(self._slot)

    def release_when_done(self, future: Future[Any]) -> None:
        """Release once ``future`` finishes (success, error or cancellation)."""
        future.add_done_callback(lambda _f: self.release())

    def __enter__(self) -> ModelLease[M]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _load_llm(artifact: InstalledArtifact, options: ModelOptions) -> LoadedModel:
    # llama.cpp is imported when the first model loads, not when the agent starts idle
    from edge_agent.runtime.llama_batched import BatchedTextGenerator

    return BatchedTextGenerator.load(artifact, options)


def _load_embedder(artifact: InstalledArtifact, options: ModelOptions) -> LoadedModel:
    from edge_agent.runtime.llama import LlamaEmbedder

    return LlamaEmbedder.load(artifact, options)


def _llama_loaders() -> dict[str, ModelLoader]:
    return {LLM: _load_llm, EMBEDDING: _load_embedder}


def _load_only(_model: Any) -> None:
    """A job that does nothing: submitting it loads the slot's model on its own thread."""


def _first_run(kind: str) -> Callable[[Any], None]:
    """The warm-up job for a model of ``kind``: the first chat after a bare load answers
    its first token in ~2.4x the time of the next ones (benchmarks/first_request.py), a
    cost that would otherwise land on the first request and on the p95 a rollout's
    latency gate compares."""

    def run(model: Any) -> None:
        if kind == LLM:
            generator = cast(TextGenerator, model)
            try:  # a chat: its path has first-use costs of its own (the bare model's do not)
                join_pieces(generator.chat([ChatTurn("user", "Hello")], _WARM_UP))
            except BadRequestError:  # a template that cannot take one user turn
                join_pieces(generator.complete("Hello", _WARM_UP))
        elif kind == EMBEDDING:
            cast(Embedder, model).embed(["hello"])

    return run


_WARM_UP = Sampling(max_tokens=1, temperature=0.0)


class ModelRegistry:
    """Serves the models of the active release by artifact name.

    Thread-safe. ``loaders`` maps an artifact kind to the function that loads it (default:
    llama.cpp for ``llm`` and ``embedding``); artifacts of other kinds are not served here.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        loaders: Mapping[str, ModelLoader] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._loaders = dict(loaders) if loaders is not None else _llama_loaders()
        self._clock = clock
        self._lock = threading.Lock()
        self._release: InstalledRelease | None = None
        self._slots: dict[str, _Slot] = {}
        self._live: list[_Slot] = []  # every slot not freed yet (old releases' included)
        self._unloaded: deque[dict[str, Any]] = deque(maxlen=20)
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None
        self._idle_unload_seconds = settings.idle_unload_seconds
        if settings.idle_unload_seconds > 0:
            self._start_reaper()

    def _start_reaper(self) -> None:
        self._reaper = threading.Thread(target=self._reap, name="model-idle-unloader", daemon=True)
        self._reaper.start()

    def set_idle_unload(self, seconds: float) -> None:
        """Unload models idle for ``seconds`` from now on (0: never; remote config)."""
        with self._lock:
            self._idle_unload_seconds = seconds
            start = seconds > 0 and self._reaper is None
        if start:
            self._start_reaper()

    # --- release lifecycle -------------------------------------------------------------

    @property
    def release(self) -> InstalledRelease | None:
        return self._release

    def activate(self, release: InstalledRelease) -> None:
        """Serve ``release`` from now on. Requests admitted before keep their old model,
        which is freed after they finish; a model whose file and options did not change
        stays loaded. Raises ConfigError (and keeps the old release) if the release's
        model config is invalid."""
        specs = [
            (artifact, resolve_options(self._settings, release.config, artifact.name))
            for artifact in release.artifacts
            if artifact.kind in self._loaders
        ]
        to_free: list[_Slot] = []
        with self._lock:
            old = self._slots
            new: dict[str, _Slot] = {}
            for artifact, options in specs:
                previous = old.get(artifact.name)
                if (
                    previous is not None
                    and previous.artifact == artifact
                    and previous.options == options
                ):
                    previous.release_id = release.release_id
                    new[artifact.name] = previous
                else:
                    new[artifact.name] = _Slot(
                        artifact,
                        options,
                        self._loaders[artifact.kind],
                        release.release_id,
                        self._clock,
                        self._make_room,
                    )
                    self._live.append(new[artifact.name])
            kept = {id(slot) for slot in new.values()}
            for slot in old.values():
                if id(slot) not in kept:
                    slot.retired = True
                    if slot.admitted == 0:
                        to_free.append(slot)
            self._slots = new
            self._release = release
        for slot in to_free:
            self._free(slot)

    def _free(self, slot: _Slot) -> None:
        with self._lock:
            if slot in self._live:
                self._live.remove(slot)
        slot.free()

    def warm(self, names: Iterable[str] | None = None, *, first_run: bool = True) -> None:
        """Load models now instead of on first use (all of them by default), and run each
        once (a one-token chat, one embedded word) so that the first request does not pay
        the first use; blocks. ``first_run=False`` only loads them (what the benchmark of
        that first use compares against)."""
        wanted = None if names is None else set(names)
        with self._lock:
            slots = [s for n, s in self._slots.items() if wanted is None or n in wanted]
        jobs = [_first_run(s.artifact.kind) if first_run else _load_only for s in slots]
        for future in [slot.submit(job) for slot, job in zip(slots, jobs, strict=True)]:
            future.result()

    def close(self) -> None:
        """Stop serving for good: free every model once its admitted requests are done."""
        self._closed.set()
        self.deactivate()

    def deactivate(self) -> None:
        """Serve no release (until the next ``activate``): free every model once its
        admitted requests are done; new requests get NoModelError."""
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
            self._release = None
            idle = []
            for slot in slots:
                slot.retired = True
                if slot.admitted == 0:
                    idle.append(slot)
        for slot in idle:
            self._free(slot)

    # --- listing -----------------------------------------------------------------------

    def models(self) -> list[ServedModel]:
        with self._lock:
            slots = list(self._slots.values())
        return [
            ServedModel(
                name=s.artifact.name,
                kind=s.artifact.kind,
                format=s.artifact.format,
                sha256=s.artifact.sha256,
                release_id=s.release_id,
                loaded=s.loaded,
                admitted=s.admitted,
                engine=s.stats(),
            )
            for s in slots
        ]

    # --- memory budget -----------------------------------------------------------------

    def _make_room(self, slot: _Slot) -> None:
        """Before ``slot`` loads: estimate its memory and, under ``memory_budget_mb``,
        unload idle models (least recently used first) until it fits. Raises
        ResourceExhaustedError when it cannot fit (alone, or beside busy models)."""
        options = slot.options
        chat = slot.artifact.kind == LLM
        slot.estimate = estimate_file(
            slot.artifact.path,
            n_ctx=options.n_ctx,
            slots=options.n_parallel if chat else 1,
            prompt_cache_mb=options.prompt_cache_mb if chat else 0,
        )
        budget = self._settings.memory_budget_mb
        need = slot.estimate.total_mb
        name = slot.artifact.name
        with self._lock:
            if budget is not None and need > budget:
                raise ResourceExhaustedError(
                    f"model {name!r} needs {slot.estimate.describe()} but memory_budget_mb "
                    f"is {budget}; lower n_ctx, n_parallel or prompt_cache_mb for it in the "
                    f"release config, or raise the budget (docs/runbooks/agent-memory-budget.md)"
                )
            others = [s for s in self._live if s is not slot and s.reserved and s.estimate]
            resident = [
                Resident(
                    name=str(i),
                    mb=s.estimate.total_mb if s.estimate else 0.0,
                    idle=s.in_use == 0 and s.loaded,
                    last_used=s.last_used,
                )
                for i, s in enumerate(others)
            ]
            plan = [] if budget is None else plan_unloads(need, budget, resident)
            if plan is None:
                busy = ", ".join(sorted(s.artifact.name for s in others if s.admitted))
                raise BusyError(
                    f"model {name!r} needs {slot.estimate.describe()} and memory_budget_mb "
                    f"({budget}) is taken by models in use ({busy}); retry shortly "
                    f"(docs/runbooks/agent-memory-budget.md)"
                )
            victims = [others[int(i)] for i in plan]
            slot.reserved = True
            for victim in victims:
                self._unloaded.append(
                    {
                        "model": victim.artifact.name,
                        "release_id": victim.release_id,
                        "freed_mb": round(victim.estimate.total_mb if victim.estimate else 0, 1),
                        "for_model": name,
                        "reason": f"memory_budget_mb {budget}: loading {name!r} "
                        f"({need:.0f} MB) unloaded the least recently used idle model",
                        "at": time.time(),
                    }
                )
        for victim in victims:
            victim._unload_now()

    def memory_report(self) -> dict[str, Any]:
        """The memory budget, what loaded models are estimated to take, what was unloaded."""
        with self._lock:
            loaded = {
                s.artifact.name: round(s.estimate.total_mb, 1)
                for s in self._live
                if s.reserved and s.estimate is not None
            }
            return {
                "budget_mb": self._settings.memory_budget_mb,
                "estimated_mb": round(sum(loaded.values()), 1),
                "loaded_mb": loaded,
                "unloaded": list(self._unloaded),
            }

    def context_length(self, name: str) -> int:
        """The context window a model is (or will be) loaded with."""
        with self._lock:
            slot = self._find(name, None)
            return slot.options.n_ctx

    # --- admission ---------------------------------------------------------------------

    def lease(self, name: str, kind: str) -> ModelLease[Any]:
        """Admit one request on model ``name`` of ``kind``.

        Raises NoModelError (no release yet), NotFoundError (no such model of that kind)
        or BusyError (``max_queue`` requests already hold it); never waits.
        """
        with self._lock:
            slot = self._find(name, kind)
            if slot.admitted >= self._settings.max_queue:
                raise BusyError(
                    f"model {name!r} is busy: {slot.admitted} request(s) already running or "
                    f"queued (max_queue={self._settings.max_queue}); retry shortly"
                )
            slot.admitted += 1
            slot.last_used = self._clock()
        return ModelLease(self, slot)

    def lease_generator(self, name: str) -> ModelLease[TextGenerator]:
        return cast(ModelLease[TextGenerator], self.lease(name, LLM))

    def lease_embedder(self, name: str) -> ModelLease[Embedder]:
        return cast(ModelLease[Embedder], self.lease(name, EMBEDDING))

    def _find(self, name: str, kind: str | None) -> _Slot:
        if self._release is None:
            raise NoModelError(
                "no model release is active yet: the agent serves models once an update "
                "has been verified and installed (see GET /v1/status)"
            )
        slot = self._slots.get(name)
        if slot is not None and (kind is None or slot.artifact.kind == kind):
            return slot
        wanted = [n for n, s in self._slots.items() if kind is None or s.artifact.kind == kind]
        available = ", ".join(sorted(wanted)) or "none"
        what = f"{kind} model" if kind else "model"
        if slot is not None:
            raise NotFoundError(
                f"model {name!r} is a {slot.artifact.kind} model, not an {what}; "
                f"{what}s in release {self._release.release_name} "
                f"{self._release.release_version}: {available}"
            )
        raise NotFoundError(
            f"model {name!r} does not exist; {what}s in release "
            f"{self._release.release_name} {self._release.release_version}: {available}"
        )

    def _release_slot(self, slot: _Slot) -> None:
        with self._lock:
            slot.admitted -= 1
            slot.last_used = self._clock()
            free = slot.retired and slot.admitted == 0
        if free:
            self._free(slot)

    # --- idle unloading ----------------------------------------------------------------

    def keep_alive(self, name: str, seconds: float | None) -> None:
        """Keep model ``name`` loaded ``seconds`` after its last use instead of
        ``idle_unload_seconds`` (Ollama's ``keep_alive``): None goes back to the setting,
        ``math.inf`` never unloads it, 0 unloads it as soon as no request holds it (the
        next request loads it again, under the setting)."""
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                return
            slot.keep_alive = seconds
            start = (
                seconds is not None
                and seconds < math.inf
                and (self._reaper is None or not self._reaper.is_alive())
            )
        if start:
            self._start_reaper()

    def unloads_at(self, name: str) -> float | None:
        """When (on the registry's clock) model ``name`` unloads if nobody uses it again;
        None: it stays loaded (or is not loaded)."""
        with self._lock:
            slot = self._find(name, None)
            if not slot.loaded:
                return None
            if slot.keep_alive == 0:
                return slot.last_used
            idle_after = self._idle_after(slot)
            if idle_after <= 0 or idle_after == math.inf:
                return None
            return slot.last_used + idle_after

    def _idle_after(self, slot: _Slot) -> float:
        return self._idle_unload_seconds if slot.keep_alive is None else slot.keep_alive

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload every model idle for its keep-alive (``idle_unload_seconds`` unless a
        request set one; keep-alive 0: as soon as no request holds it); returns their
        names."""
        at = self._clock() if now is None else now
        with self._lock:
            idle = [
                s
                for s in self._slots.values()
                if is_idle(
                    loaded=s.loaded,
                    admitted=s.in_use,
                    last_used=s.last_used,
                    now=at,
                    idle_after=self._idle_after(s),
                )
                or (s.keep_alive == 0 and s.loaded and s.in_use == 0)
            ]
            for s in idle:
                if s.keep_alive == 0:  # done: the next load is under the setting again
                    s.keep_alive = None
        for slot in idle:
            slot.unload()
        return [s.artifact.name for s in idle]

    def _reap(self) -> None:
        while not self._closed.wait(self._reap_interval()):
            self.unload_idle()

    def _reap_interval(self) -> float:
        with self._lock:
            slots = list(self._slots.values())
            waits = [self._idle_after(s) for s in slots]
            unload_soon = any(s.keep_alive == 0 for s in slots)
        if unload_soon:  # a keep-alive of 0: unload within 50 ms of the request's end
            return 0.05
        positive = [w for w in [self._idle_unload_seconds, *waits] if 0 < w < math.inf]
        return min(max(min(positive) / 4, 0.05), 5.0) if positive else 5.0

    # --- blocking conveniences for other parts of the agent -----------------------------

    def chat(
        self,
        name: str,
        turns: Sequence[ChatTurn],
        sampling: Sampling,
        *,
        cancelled: threading.Event | None = None,
    ) -> GeneratedText:
        """Generate a whole chat reply (blocking: call it from a worker thread); with
        ``cancelled``, stop after the token on which it is set (or before starting)."""

        def whole(m: TextGenerator) -> GeneratedText:
            return join_until_cancelled(
                lambda: m.chat(turns, sampling), cancelled or threading.Event()
            )

        with self.lease_generator(name) as lease:
            return lease.run(whole).result()

    def complete(self, name: str, prompt: str, sampling: Sampling) -> GeneratedText:
        """Continue ``prompt`` (blocking: call it from a worker thread)."""
        with self.lease_generator(name) as lease:
            return lease.run(lambda m: join_pieces(m.complete(prompt, sampling))).result()

    def embed(self, name: str, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts`` with embedding model ``name`` (blocking), one vector per text."""
        with self.lease_embedder(name) as lease:
            return lease.run(lambda m: m.embed(texts)).result().vectors

    async def embed_async(self, name: str, texts: Sequence[str]) -> list[list[float]]:
        """``embed`` for async code: waits without blocking the event loop."""
        lease = self.lease_embedder(name)
        future = lease.run(lambda m: m.embed(texts))
        lease.release_when_done(future)
        return (await asyncio.wrap_future(future)).vectors
