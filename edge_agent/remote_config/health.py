"""The config health check: does the active release still answer under a new config?

It sends the requests a config can break: when the system prompt changed, a smoke chat
per chat model with it and the sampling defaults (a system prompt that overflows the
context, or breaks the chat template, fails here); with RAG thresholds set, the
release's RAG smoke query. Settings the schema bounds and no request can trip over
(token and temperature defaults, log level, intervals) need no request, so most
changes apply in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge_agent.runtime import ChatTurn, Sampling, join_pieces
from edge_agent.updates.health import smoke_checks
from protocol.remote_config import ChatSettings, RagSettings, RemoteConfig

if TYPE_CHECKING:
    from edge_agent.serving import ReleaseServing

SMOKE_USER = "Reply with one word: are you ready?"


class ServingConfigHealth:
    """:class:`~edge_agent.remote_config.sync.ConfigHealthProbe` over the live runtime."""

    def __init__(self, serving: ReleaseServing) -> None:
        self._serving = serving
        self._passed: tuple[str, str | None] | None = None  # (release, prompt) that passed

    def check(self, config: RemoteConfig) -> str | None:
        release = self._serving.registry.release
        if release is None:
            return None  # nothing serves: nothing a config could break
        problems: list[str] = []
        prompt_checked = (release.release_id, config.chat.system_prompt)
        for check in smoke_checks(release):
            if (
                check.kind == "chat"
                and config.chat.system_prompt
                and prompt_checked != self._passed
            ):
                problem = self._chat(check.artifact, config.chat)
                if problem:
                    problems.append(f"chat smoke request on {check.artifact!r}: {problem}")
            elif check.kind == "rag" and config.rag != RagSettings():
                result = self._serving.smoke(release, check)
                if not result.ok:
                    problems.append(f"{check}: {result.error}")
        if problems:
            return "; ".join(problems)
        self._passed = prompt_checked
        return None

    def _chat(self, name: str, chat: ChatSettings) -> str | None:
        turns = [ChatTurn("user", SMOKE_USER)]
        if chat.system_prompt:
            turns.insert(0, ChatTurn("system", chat.system_prompt))
        sampling = Sampling(
            max_tokens=min(4, chat.max_tokens_default or 4),
            temperature=0.0 if chat.temperature_default is None else chat.temperature_default,
            seed=0,
        )
        timeout = self._serving.settings.health_check_timeout_seconds
        try:
            with self._serving.registry.lease_generator(name) as lease:
                reply = lease.run(lambda m: join_pieces(m.chat(tuple(turns), sampling))).result(
                    timeout=timeout
                )
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        if reply.completion_tokens < 1 or not reply.text.strip():
            return f"the reply was empty ({reply.prompt_tokens} prompt tokens)"
        return None
