"""Prompt packs and policy bundles as release artifacts: checked at upload (pointer and
rule), checked again at activation, and read under the remote config on the device."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import BadUpdateError
from edge_agent.rag.grounding import EvidencePolicy
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.remote_config import LiveConfig
from edge_agent.remote_config.release_defaults import check_release_prompts
from protocol.release_artifacts import release_artifact_problems
from protocol.remote_config import RemoteConfig
from tests.control_plane.conftest import ControlPlaneUnderTest


def artifact(tmp_path: Path, kind: str, body: object, name: str | None = None) -> InstalledArtifact:
    path = tmp_path / f"{name or kind}.json"
    data = json.dumps(body).encode()
    path.write_bytes(data)
    return InstalledArtifact(
        name=name or kind,
        kind=kind,
        format="json",
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        path=path,
    )


def release(*artifacts: InstalledArtifact) -> InstalledRelease:
    return InstalledRelease("rel_1", "kiosk", "1.0.0", 1, tuple(artifacts))


def test_schema_problems_name_pointer_and_rule() -> None:
    assert release_artifact_problems("prompt-pack", b'{"system_prompt": "Be brief."}') == []
    problems = release_artifact_problems("prompt-pack", b'{"system_promt": "x"}')
    assert problems is not None and problems[0].pointer == "/system_promt"
    assert "unknown key" in problems[0].rule
    policy = release_artifact_problems("policy", b'{"abstention": {"min_similarity": 3}}')
    assert policy is not None and policy[0].pointer == "/abstention/min_similarity"
    assert release_artifact_problems("llm", b"GGUF") is None


def test_the_control_plane_refuses_an_invalid_prompt_pack_at_upload(
    cp: ControlPlaneUnderTest,
) -> None:
    def upload(body: bytes, kind: str = "prompt-pack", fmt: str = "json") -> Any:
        return cp.client.post(
            "/api/v1/artifacts",
            params={"name": "prompts", "kind": kind, "format": fmt},
            content=body,
            headers=cp.auth("release-manager"),
        )

    bad = upload(b'{"system_prompt": "Be brief.", "jailbreak": true}')
    assert bad.status_code == 422, bad.text
    assert "/jailbreak: unknown key" in bad.json()["error"]["message"]
    good = upload(b'{"system_prompt": "Be brief.", "templates": {"greet": "Hello {name}"}}')
    assert good.status_code in (200, 201), good.text
    assert good.json()["kind"] == "prompt-pack"
    policy = upload(b'{"abstention": {"min_similarity": 0.4}}', kind="policy")
    assert policy.status_code in (200, 201), policy.text


def test_activation_refuses_an_invalid_pack_or_two_of_them(tmp_path: Path) -> None:
    check_release_prompts(release(artifact(tmp_path, "prompt-pack", {"system_prompt": "Hi."})))
    with pytest.raises(BadUpdateError, match="prompt-pack"):
        check_release_prompts(release(artifact(tmp_path, "prompt-pack", {"system": "x"})))
    with pytest.raises(BadUpdateError, match="at most one"):
        check_release_prompts(
            release(
                artifact(tmp_path, "prompt-pack", {}, "a"),
                artifact(tmp_path, "prompt-pack", {}, "b"),
            )
        )


def test_the_release_gives_defaults_and_the_remote_config_wins(tmp_path: Path) -> None:
    active = release(
        artifact(tmp_path, "prompt-pack", {"system_prompt": "From the release."}),
        artifact(
            tmp_path, "policy", {"abstention": {"min_similarity": 0.4, "min_term_coverage": 0.7}}
        ),
    )
    live = LiveConfig(release=lambda: active)
    assert live.chat_defaults().system_prompt == "From the release."
    assert live.evidence_policy().min_similarity == 0.4
    assert live.evidence_policy().min_term_coverage == 0.7
    live.apply(
        RemoteConfig.model_validate(
            {"chat": {"system_prompt": "From the operator."}, "rag": {"min_similarity": 0.5}}
        ),
        1,
    )
    assert live.chat_defaults().system_prompt == "From the operator."
    policy = live.evidence_policy()
    assert policy.min_similarity == 0.5 and policy.min_term_coverage == 0.7
    assert policy.confident_similarity == EvidencePolicy().confident_similarity
