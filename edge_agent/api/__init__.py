"""The agent's local HTTP API: OpenAI-compatible model routes behind a bearer token."""

from edge_agent.api.app import InvalidParameterError, create_local_api

__all__ = ["InvalidParameterError", "create_local_api"]
