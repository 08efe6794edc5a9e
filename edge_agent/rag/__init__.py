"""On-device retrieval-augmented generation: hybrid retrieval with span-grounded citations.

Pure core: :mod:`.text`, :mod:`.dedupe`, :mod:`.chunking`, :mod:`.fusion`,
:mod:`.grounding`. Adapters: :mod:`.loaders` (file formats), :mod:`.index` (SQLite with
FTS5 and sqlite-vec), :mod:`.llama` (llama.cpp), :mod:`.api` (FastAPI router).
"""

from edge_agent.rag.chunking import Chunk, ChunkingPolicy, chunk_text
from edge_agent.rag.engine import (
    Answer,
    ChatModel,
    EmbeddingModel,
    IngestOutcome,
    RagEngine,
    RetrievalSettings,
)
from edge_agent.rag.grounding import Citation, EvidencePolicy, Source
from edge_agent.rag.index import EmbeddingIdentity, RagIndex, read_identity

__all__ = [
    "Answer",
    "ChatModel",
    "Chunk",
    "ChunkingPolicy",
    "Citation",
    "EmbeddingIdentity",
    "EmbeddingModel",
    "EvidencePolicy",
    "IngestOutcome",
    "RagEngine",
    "RagIndex",
    "RetrievalSettings",
    "Source",
    "chunk_text",
    "read_identity",
]
