"""Every operator flow with ``outpost-cp`` over HTTP, as an operator runs it: no curl."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from control_plane.ops.client import ApiRefusedError, OperatorClient
from protocol import paths
from protocol.keys import generate_key_pair
from tests.control_plane.cli_harness import OperatorShell, operator_shell
from tests.control_plane.conftest import enroll_body, small_gguf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[OperatorShell]:
    with operator_shell(tmp_path, capsys) as shell:
        yield shell


def gguf_file(sh: OperatorShell, seed: int = 0) -> Path:
    path = sh.tmp_path / f"model-{seed}.gguf"
    path.write_bytes(small_gguf(sh.tmp_path, seed=seed))
    return path


def json_file(sh: OperatorShell, mib: float) -> Path:
    path = sh.tmp_path / "big.json"
    path.write_text(json.dumps({"pad": "x" * int(mib * (1 << 20))}))
    return path


def upload(sh: OperatorShell, path: Path, name: str = "chat") -> dict[str, str]:
    run = sh.run(
        "artifacts", "upload", str(path), "--name", name, "--kind", "llm", "--format", "gguf",
        role="release-manager",
    )  # fmt: skip
    artifact: dict[str, str] = run.data
    return artifact


def release(sh: OperatorShell, version: str = "1.0.0", seed: int = 0) -> dict[str, str]:
    artifact = upload(sh, gguf_file(sh, seed))
    run = sh.run(
        "releases", "create", "--name", "assistant", "--version", version,
        "--artifact", artifact["id"], role="release-manager",
    )  # fmt: skip
    created: dict[str, str] = run.data
    return created


# --- tokens ------------------------------------------------------------------------------


def test_tokens_create_list_revoke(sh: OperatorShell) -> None:
    created = sh.run("tokens", "create", "--name", "ci-publisher", "--role", "release-manager")
    token = created.data["token"]
    assert created.data["role"] == "release-manager"

    listed = sh.run("tokens", "list")
    assert sorted(t["name"] for t in listed.data) == ["admin", "ci-publisher"]
    table = sh.run("tokens", "list", json_mode=False)
    assert re.search(r"ci-publisher\s+release-manager", table.out)
    assert token not in listed.out + table.out

    revoked = sh.run("tokens", "revoke", created.data["id"])
    assert revoked.data["revoked_at"] is not None
    assert token not in revoked.out + revoked.err

    (sh.tmp_path / "ci.token").write_text(token)
    refused = sh.bare(
        "--server", sh.url, "--token-file", str(sh.tmp_path / "ci.token"), "artifacts", "list"
    )
    assert refused.code == 1
    assert "API token was revoked" in refused.err and "(HTTP 401" in refused.err
    assert "check the token" in refused.err
    assert token not in refused.err


def test_a_created_token_is_printed_once_in_the_readable_summary(sh: OperatorShell) -> None:
    run = sh.run("tokens", "create", "--name", "ops", "--role", "operator", json_mode=False)
    assert run.code == 0, run.err
    secret = re.search(r"^token:\s+(ocp_\S+)$", run.out, re.MULTILINE)
    assert secret is not None, run.out
    assert run.out.count(secret[1]) == 1
    assert "shown this once" in run.out


# --- enrollment and devices --------------------------------------------------------------


def test_enrollment_token_carries_its_tags_and_lifetime_to_the_device(sh: OperatorShell) -> None:
    run = sh.run(
        "enrollment-tokens", "create", "--tag", "store=porto", "--tag", "hw=rpi5",
        "--expires-in", "2h", role="operator",
    )  # fmt: skip
    body = run.data
    assert body["tags"] == ["hw=rpi5", "store=porto"]
    expires = sh.cp.clock() + timedelta(hours=2)
    assert body["expires_at"].startswith(expires.isoformat()[:19])

    r = sh.cp.client.post(paths.ENROLL, json=enroll_body(body["token"], generate_key_pair()))
    assert r.status_code == 201, r.text
    device = sh.run("devices", "show", r.json()["device_id"]).data
    assert device["tags"] == ["hw=rpi5", "store=porto"]


def test_devices_list_filters_by_cohort_and_show_prints_one(sh: OperatorShell) -> None:
    porto_pi = sh.cp.enroll("porto-pi", tags=["hw=rpi5", "store=porto"])
    sh.cp.enroll("porto-x86", tags=["hw=x86", "store=porto"])
    sh.cp.enroll("lisbon-pi", tags=["hw=rpi5", "store=lisbon"])

    everyone = sh.run("devices", "list", role="viewer").data
    assert len(everyone) == 3
    cohort = sh.run("devices", "list", "--cohort", "hw=rpi5, store=porto", role="viewer")
    assert [d["id"] for d in cohort.data] == [porto_pi.id]
    table = sh.run("devices", "list", "--cohort", "store=porto", json_mode=False)
    assert "porto-pi" in table.out and "porto-x86" in table.out
    assert "lisbon-pi" not in table.out
    none = sh.run("devices", "list", "--cohort", "store=faro", json_mode=False)
    assert none.out.strip() == "no devices in cohort 'store=faro'"
    facts = sh.run("devices", "list", "--cohort", "hw!=x86,ram_mb>=4096", role="viewer").data
    assert sorted(d["name"] for d in facts) == ["lisbon-pi", "porto-pi"]
    refused = sh.cp.client.get(
        "/api/v1/devices", params={"cohort": "store>=3"}, headers=sh.cp.auth("viewer")
    )
    assert refused.status_code == 422 and "cohort:" in refused.text

    shown = sh.run("devices", "show", porto_pi.id)
    assert (
        shown.data
        == sh.cp.client.get(f"/api/v1/devices/{porto_pi.id}", headers=sh.cp.auth()).json()
    )
    readable = sh.run("devices", "show", porto_pi.id, json_mode=False)
    assert re.search(r"^tags:\s+hw=rpi5,store=porto$", readable.out, re.MULTILINE)


def test_an_unknown_device_exits_1_with_the_api_message(sh: OperatorShell) -> None:
    run = sh.run("devices", "show", "dev_nope")
    assert run.code == 1
    assert run.out == ""
    assert "no device with id 'dev_nope' (HTTP 404 not_found)" in run.err


# --- artifacts ---------------------------------------------------------------------------


def test_artifact_upload_list_show(sh: OperatorShell) -> None:
    path = gguf_file(sh)
    run = sh.run(
        "artifacts", "upload", str(path), "--name", "chat", "--kind", "llm", "--format", "gguf",
        "--runtime", "llama.cpp", "--quantization", "F32",
        "--custom", '{"constraints": {"min_ram_mb": 512}}', role="release-manager",
    )  # fmt: skip
    artifact = run.data
    assert artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert artifact["length"] == path.stat().st_size
    assert artifact["custom"]["runtime"] == "llama.cpp"
    assert artifact["custom"]["quantization"] == "F32"
    assert artifact["custom"]["constraints"] == {"min_ram_mb": 512}
    assert f"{path.name}: stored," in run.err

    again = sh.run(
        "artifacts", "upload", str(path), "--name", "chat", "--kind", "llm", "--format", "gguf",
        role="release-manager",
    )  # fmt: skip
    assert again.data["id"] == artifact["id"]
    assert "already stored (same bytes)" in again.err

    assert [a["id"] for a in sh.run("artifacts", "list").data] == [artifact["id"]]
    assert sh.run("artifacts", "show", artifact["id"]).data == artifact
    readable = sh.run("artifacts", "show", artifact["id"], json_mode=False)
    assert re.search(rf"^sha256:\s+{artifact['sha256']}$", readable.out, re.MULTILINE)


def test_upload_without_a_terminal_prints_one_final_line_and_no_bar(sh: OperatorShell) -> None:
    path = json_file(sh, mib=3)
    run = sh.run(
        "artifacts", "upload", str(path), "--name", "pad", "--kind", "config", "--format", "json",
        role="release-manager",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "\r" not in run.err and "[#" not in run.err
    lines = run.err.splitlines()
    assert len(lines) == 1
    assert re.fullmatch(
        r"big\.json: stored, 3\.0 MiB sent in \d+\.\d s \([\d.]+ [KMG]?i?B/s\)", lines[0]
    )


def test_upload_streams_the_file_in_chunks(sh: OperatorShell) -> None:
    path = json_file(sh, mib=3.5)
    seen: list[tuple[int, int]] = []
    token = sh.token_file("release-manager").read_text().strip()
    with OperatorClient(server=sh.url, token=token) as client:
        uploaded = client.upload_artifact(
            path,
            name="pad",
            kind="config",
            format="json",
            progress=lambda s, t: seen.append((s, t)),
        )
    total = path.stat().st_size
    mib = 1 << 20
    assert seen == [(0, total), (mib, total), (2 * mib, total), (3 * mib, total), (total, total)]
    assert uploaded.created
    assert uploaded.artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _upload_on_a_terminal(sh: OperatorShell, path: Path, *extra: str) -> tuple[int, str]:
    """``python -m control_plane artifacts upload`` with its stderr on a pseudo-terminal."""
    main_fd, terminal_fd = pty.openpty()
    env = {
        **os.environ,
        "OUTPOST_CP_URL": sh.url,
        "OUTPOST_CP_TOKEN_FILE": str(sh.token_file("release-manager")),
    }
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "control_plane", "artifacts", "upload", str(path),
            "--name", "pad", "--kind", "config", "--format", "json", *extra,
        ],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=terminal_fd,
    )  # fmt: skip
    os.close(terminal_fd)
    shown = b""
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main_fd)
    assert proc.stdout is not None
    proc.stdout.read()
    return proc.wait(timeout=60), shown.decode()


@pytest.mark.slow
def test_upload_on_a_terminal_draws_a_progress_bar(sh: OperatorShell) -> None:
    path = json_file(sh, mib=6)
    code, shown = _upload_on_a_terminal(sh, path)
    assert code == 0, shown
    frames = [f for f in re.split(r"[\r\n]", shown) if f.strip()]
    assert re.fullmatch(
        r"big\.json \[\.{30}\]\s+0% 0 B / 6\.0 MiB [\d.]+ [KMG]?i?B/s\x1b\[K", frames[0]
    )
    assert re.fullmatch(
        r"big\.json \[#{30}\] 100% 6\.0 MiB / 6\.0 MiB [\d.]+ [KMG]?i?B/s\x1b\[K", frames[-2]
    )
    assert re.fullmatch(r"big\.json: stored, 6\.0 MiB sent in .*", frames[-1])

    code, quiet = _upload_on_a_terminal(sh, path, "--quiet")
    assert code == 0, quiet
    assert "[" not in quiet and "\r" not in quiet.replace("\r\n", "\n")
    assert "big.json: already stored (same bytes), 6.0 MiB sent in" in quiet


# --- releases and assignment -------------------------------------------------------------


def test_releases_create_list_show_by_id_and_by_name_at_version(sh: OperatorShell) -> None:
    model = upload(sh, gguf_file(sh, 1), name="chat")
    embedder = upload(sh, gguf_file(sh, 2), name="embedder")
    config = sh.tmp_path / "config.json"
    config.write_text('{"temperature": 0.2}')
    run = sh.run(
        "releases", "create", "--name", "assistant", "--version", "1.0.0",
        "--artifact", model["id"], "--artifact", embedder["id"], "--config", f"@{config}",
        role="release-manager",
    )  # fmt: skip
    created = run.data
    assert [a["id"] for a in created["artifacts"]] == [model["id"], embedder["id"]]
    assert created["config"] == {"temperature": 0.2}
    assert created["state"] == "published"
    sh.cp.clock.advance(seconds=1)
    other = release(sh, version="2.0.0", seed=3)

    assert [r["version"] for r in sh.run("releases", "list").data] == ["2.0.0", "1.0.0"]
    assert [r["id"] for r in sh.run("releases", "list", "--name", "assistant").data] == [
        other["id"],
        created["id"],
    ]
    assert sh.run("releases", "list", "--name", "nothing").data == []
    by_ref = sh.run("releases", "show", "assistant@1.0.0", role="viewer").data
    assert by_ref == sh.run("releases", "show", created["id"]).data
    # show adds what a device on each earlier release downloads (none runs one here)
    assert by_ref["downloads"] == [] and created["downloads"] is None
    assert {**by_ref, "downloads": None} == created
    readable = sh.run("releases", "show", "assistant@2.0.0", json_mode=False)
    assert re.search(r"^release:\s+assistant@2\.0\.0$", readable.out, re.MULTILINE)


def test_an_unknown_release_exits_1_and_names_it(sh: OperatorShell) -> None:
    release(sh)
    run = sh.run("releases", "show", "assistant@9.9")
    assert run.code == 1
    assert "no release assistant@9.9" in run.err and "HTTP 404" in run.err


def test_resolve_release_is_reusable_from_the_client(sh: OperatorShell) -> None:
    created = release(sh)
    token = sh.token_file("viewer").read_text().strip()
    with OperatorClient(server=sh.url, token=token) as client:
        assert client.resolve_release("assistant@1.0.0")["id"] == created["id"]
        assert client.resolve_release(created["id"])["version"] == "1.0.0"
        with pytest.raises(ApiRefusedError) as refused:
            client.resolve_release("assistant@0.1")
    assert refused.value.status == 404
    assert refused.value.error_type == "not_found"


def test_assign_by_name_at_version(sh: OperatorShell) -> None:
    created = release(sh)
    device = sh.cp.enroll()
    run = sh.run("assign", device.id, "--release", "assistant@1.0.0", role="operator")
    assert run.data["release_id"] == created["id"]
    assert run.data["device_id"] == device.id
    assert device.get_assignment().status_code == 200
    again = sh.run("assign", device.id, "--release", created["id"], json_mode=False)
    assert again.code == 0, again.err
    assert f"assigned assistant@1.0.0 ({created['id']}) to {device.id}: assignment version 2" in (
        again.out
    )


def test_assigning_an_unknown_release_or_device_exits_1_and_assigns_nothing(
    sh: OperatorShell,
) -> None:
    release(sh)
    device = sh.cp.enroll()
    unknown_release = sh.run("assign", device.id, "--release", "assistant@2.0", role="operator")
    assert unknown_release.code == 1
    assert "no release assistant@2.0" in unknown_release.err
    unknown_device = sh.run("assign", "dev_nope", "--release", "assistant@1.0.0", role="operator")
    assert unknown_device.code == 1
    assert "dev_nope" in unknown_device.err and "HTTP 404" in unknown_device.err
    assert "assignment.create" not in [e["action"] for e in sh.cp.audit()]


def test_a_viewer_token_is_refused_with_the_api_message(sh: OperatorShell) -> None:
    release(sh)
    device = sh.cp.enroll()
    run = sh.run("assign", device.id, "--release", "assistant@1.0.0", role="viewer")
    assert run.code == 1
    assert "role 'viewer' may not assign" in run.err
    assert "(HTTP 403 permission_denied)" in run.err
    assert sh.run("audit", role="viewer").code == 1


# --- audit ------------------------------------------------------------------------------


def test_audit_lists_newest_first_within_the_limit(sh: OperatorShell) -> None:
    release(sh)
    entries = sh.run("audit", "--limit", "2").data
    assert [e["action"] for e in entries] == ["release.publish", "artifact.upload"]
    assert entries[0]["id"] > entries[1]["id"]
    older = sh.run("audit", "--before-id", str(entries[1]["id"])).data
    assert all(e["id"] < entries[1]["id"] for e in older)
    assert "control_plane.init" in [e["action"] for e in older]
    table = sh.run("audit", json_mode=False)
    assert re.search(r"release\.publish\s+rel_", table.out)


# --- the command line itself -------------------------------------------------------------


def test_usage_errors_exit_2_and_send_nothing(sh: OperatorShell) -> None:
    before = len(sh.cp.audit())
    no_token = sh.bare("--server", sh.url, "devices", "list")
    assert no_token.code == 2
    assert "no API token: pass --token-file FILE, or set OUTPOST_CP_TOKEN_FILE" in no_token.err
    missing = sh.bare("--server", sh.url, "--token-file", "/nonexistent", "devices", "list")
    assert missing.code == 2 and "cannot read the token file /nonexistent" in missing.err
    assert sh.run("devices", "list", "--cohort", "hw").code == 2
    assert sh.run("devices", "tag", "dev_x").code == 2
    not_a_file = sh.run(
        "artifacts", "upload", str(sh.tmp_path / "nope.gguf"), "--name", "m", "--kind", "llm",
        "--format", "gguf",
    )  # fmt: skip
    assert not_a_file.code == 2 and "is not a file" in not_a_file.err
    with pytest.raises(SystemExit) as bad_json:
        sh.run("releases", "create", "--name", "a", "--version", "1", "--artifact", "x",
               "--config", "{nope")  # fmt: skip
    assert bad_json.value.code == 2
    assert "is not valid JSON" in sh.capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_duration:
        sh.run("enrollment-tokens", "create", "--expires-in", "soon")
    assert bad_duration.value.code == 2
    assert len(sh.cp.audit()) == before


def test_connection_options_after_the_command_and_from_the_environment(
    sh: OperatorShell,
) -> None:
    device = sh.cp.enroll()
    after = sh.bare(
        "devices", "list", "--server", sh.url, "--token-file", str(sh.token_file()), "--json"
    )
    assert [d["id"] for d in json.loads(after.out)] == [device.id]
    token = sh.token_file().read_text().strip()
    from_env = sh.bare(
        "--json", "devices", "list", environ={"OUTPOST_CP_URL": sh.url, "OUTPOST_CP_TOKEN": token}
    )
    assert [d["id"] for d in json.loads(from_env.out)] == [device.id]
    via_file = sh.bare(
        "--json",
        "devices",
        "list",
        environ={"OUTPOST_CP_URL": sh.url, "OUTPOST_CP_TOKEN_FILE": str(sh.token_file())},
    )
    assert via_file.code == 0, via_file.err
    assert token not in after.out + after.err + from_env.out + from_env.err


def test_an_unreachable_server_exits_1_and_says_which_url(sh: OperatorShell) -> None:
    run = sh.bare(
        "--server", "http://127.0.0.1:9", "--token-file", str(sh.token_file()), "devices", "list"
    )
    assert run.code == 1
    assert "no answer from the control plane at http://127.0.0.1:9" in run.err
    assert "OUTPOST_CP_URL" in run.err
