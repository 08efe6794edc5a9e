"""The agent's model runtime: one backend interface per artifact kind, and the registry
that serves the active release's models by name.

llama.cpp is imported only when a model is loaded, so this package imports anywhere.
"""

from edge_agent.runtime.backends import (
    ChatTurn,
    Embedder,
    Embeddings,
    GeneratedText,
    LoadedModel,
    ModelLoader,
    ModelOptions,
    Sampling,
    TextGenerator,
    TextPiece,
    TokenLogprob,
    ToolCall,
    join_pieces,
    join_until_cancelled,
    until_cancelled,
)
from edge_agent.runtime.options import ModelOverrides, resolve_options
from edge_agent.runtime.registry import (
    EMBEDDING,
    LLM,
    ModelLease,
    ModelRegistry,
    ServedModel,
    is_idle,
)

__all__ = [
    "EMBEDDING",
    "LLM",
    "ChatTurn",
    "Embedder",
    "Embeddings",
    "GeneratedText",
    "LoadedModel",
    "ModelLease",
    "ModelLoader",
    "ModelOptions",
    "ModelOverrides",
    "ModelRegistry",
    "Sampling",
    "ServedModel",
    "TextGenerator",
    "TextPiece",
    "TokenLogprob",
    "ToolCall",
    "is_idle",
    "join_pieces",
    "join_until_cancelled",
    "resolve_options",
    "until_cancelled",
]
