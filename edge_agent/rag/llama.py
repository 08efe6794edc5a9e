"""llama.cpp adapters for the engine's model Protocols (used by the CLI and the tests;
inside the agent the runtime's model registry provides these instead).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, ContextOverflowError
from edge_agent.rag.index import EmbeddingIdentity
from edge_agent.rag.rerank import TokenVectors
from edge_agent.store import sha256_file

__all__ = ["LlamaChat", "LlamaEmbedder"]


def _llama(path: Path, **kwargs: Any) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as e:  # pragma: no cover - depends on the installed extras
        raise ConfigError("running GGUF models needs the 'llm' extra (llama-cpp-python)") from e
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    try:
        from edge_agent.runtime.llama import construct_llama

        return construct_llama(Llama, model_path=str(path), **kwargs)
    except ValueError as e:
        raise ConfigError(f"llama.cpp cannot load {path}: {e}") from e


class LlamaEmbedder:
    """A GGUF sentence-embedding model (e.g. the converted all-MiniLM-L6-v2). It also gives
    per-token output vectors (:meth:`embed_tokens`, for the ``late`` rerank mode) from a
    second context without pooling, created on first use.
    """

    def __init__(
        self,
        path: Path,
        *,
        sha256: str | None = None,
        n_threads: int | None = None,
        n_ctx: int = 512,
    ) -> None:
        self._llm = _llama(
            path, embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=n_threads
        )
        self._lock = threading.Lock()
        self._path = path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._tokens: Any = None
        self._identity = EmbeddingIdentity(
            name=path.name,
            sha256=sha256 or sha256_file(path),
            dimension=int(self._llm.n_embd()),
        )

    @property
    def identity(self) -> EmbeddingIdentity:
        return self._identity

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            vectors = self._llm.embed(list(texts), normalize=True, truncate=True)
        return [list(map(float, v)) for v in vectors]

    def embed_tokens(self, texts: Sequence[str]) -> list[TokenVectors]:
        """Each text's token vectors (unnormalized, one per model token, cut at the
        context size) with the word each token belongs to ("" for special tokens).
        """
        import llama_cpp
        import numpy as np

        with self._lock:
            if self._tokens is None:
                n = self._n_ctx
                self._tokens = _llama(
                    self._path,
                    embedding=True,
                    n_ctx=n,
                    n_batch=n,
                    n_ubatch=n,
                    n_threads=self._n_threads,
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE,
                )
            llm = self._tokens
            # one text per call: llama-cpp-python 0.3.36 reads the per-token outputs of the
            # second and later texts of a batch at the wrong offset (seen here)
            outputs = [llm.embed([text], truncate=True)[0] for text in texts]
            pieces = [
                [llm._model.token_get_text(t) for t in llm.tokenize(text.encode("utf-8"))]
                for text in texts
            ]
        result = []
        for rows, names in zip(outputs, pieces, strict=True):
            vectors = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
            result.append(TokenVectors(_words(names[: len(vectors)]), vectors))
        return result

    def close(self) -> None:
        self._llm.close()
        if self._tokens is not None:
            self._tokens.close()


_SPECIAL = re.compile(r"\[[A-Z]+\]")  # BERT's [CLS], [SEP], [PAD], ...


def _words(pieces: Sequence[str]) -> tuple[str, ...]:
    """The word of each WordPiece token: a piece that starts with the vocabulary's word
    marker begins a word, the others continue it; special tokens belong to none.
    """
    spans: list[list[int]] = []
    words: list[str] = []
    for n, piece in enumerate(pieces):
        if _SPECIAL.fullmatch(piece):
            continue
        if piece.startswith("\u2581") or not words:
            words.append(piece.removeprefix("\u2581"))
            spans.append([n])
        else:
            words[-1] += piece
            spans[-1].append(n)
    out = [""] * len(pieces)
    for word, members in zip(words, spans, strict=True):
        for n in members:
            out[n] = word.casefold()
    return tuple(out)


class LlamaChat:
    """A GGUF chat model with a chat template (e.g. SmolLM2-135M-Instruct), greedy decoding."""

    def __init__(self, path: Path, *, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        self._llm = _llama(path, n_ctx=n_ctx, n_threads=n_threads)
        self._lock = threading.Lock()

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int,
        cancelled: threading.Event | None = None,
    ) -> str:
        """The reply (greedy, streamed); with ``cancelled``, it stops after the token on
        which that is set and returns what was generated by then."""
        with self._lock:
            try:
                stream = self._llm.create_chat_completion(
                    messages=[dict(m) for m in messages],
                    max_tokens=max_tokens,
                    temperature=0.0,
                    stream=True,
                )
                parts: list[str] = []
                try:
                    for chunk in stream:
                        parts.append(str(chunk["choices"][0]["delta"].get("content") or ""))
                        if cancelled is not None and cancelled.is_set():
                            break
                finally:
                    stream.close()
            except ValueError as e:  # llama-cpp-python's "exceed context window"
                raise ContextOverflowError(f"the prompt does not fit the chat model: {e}") from e
        return "".join(parts)

    def close(self) -> None:
        self._llm.close()
