"""Installing an artifact through the agent's verified path vs a plain download, side by side.

Same 98 MB SmolLM2 GGUF, same loopback HTTP server (a ThreadingHTTPServer in this
process), runs interleaved so both see the same machine load:

- plain: ``httpx`` streaming GET -> file -> sha256 (the least any client must do);
- agent: ``ArtifactDownloader.fetch`` into a fresh ``ReleaseStore`` (length bound,
         fsync, sha256 of the file, read-only rename into ``blobs/``);
- recover: ``ReleaseStore.recover()`` at startup with that release current (re-hashes it).

Reports p50/p95 seconds and MB/s for each and the agent/plain ratio, and writes
``benchmarks/results/agent_install.json``.

    .venv/bin/python benchmarks/agent_install.py [--runs 5]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import platform
import shutil
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from edge_agent.store import ReleaseStore
from edge_agent.trust import SignedTarget
from edge_agent.updates import ArtifactDownloader
from protocol import (
    ASSIGNMENT_PAYLOAD_TYPE,
    Assignment,
    TargetRef,
    generate_key_pair,
    sign_envelope,
)

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "benchmarks" / "results" / "agent_install.json"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _model() -> Path:
    from converters.sources import smollm2_gguf

    try:
        return smollm2_gguf()
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e


def _summary(seconds: list[float], size: int) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    p50 = statistics.median(ordered)
    return {"p50_s": p50, "p95_s": p95, "p50_mb_per_s": size / p50 / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    model = _model()
    size = model.stat().st_size
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    target = TargetRef(
        name="smollm2",
        path=f"{sha}/smollm2.gguf",
        sha256=sha,
        length=size,
        kind="llm",
        format="gguf",
    )
    work = Path(tempfile.mkdtemp(prefix="agent-install-bench-"))
    served = work / "served" / sha
    served.mkdir(parents=True)
    (served / "smollm2.gguf").symlink_to(model)
    handler = functools.partial(_QuietHandler, directory=str(work / "served"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    http = httpx.Client(timeout=60)
    plain: list[float] = []
    agent: list[float] = []
    recover: list[float] = []
    try:
        for run in range(args.runs):
            order = ("plain", "agent") if run % 2 == 0 else ("agent", "plain")
            for side in order:
                if side == "plain":
                    out = work / "plain.bin"
                    t0 = time.perf_counter()
                    digest = hashlib.sha256()
                    with http.stream("GET", f"{base}/{target.path}") as r, out.open("wb") as f:
                        for chunk in r.iter_bytes(1 << 20):
                            f.write(chunk)
                    with out.open("rb") as f:
                        while block := f.read(1 << 20):
                            digest.update(block)
                    assert digest.hexdigest() == sha
                    plain.append(time.perf_counter() - t0)
                    out.unlink()
                else:
                    state = work / f"state-{run}"
                    store = ReleaseStore.open(state)
                    downloader = ArtifactDownloader(http, targets_url=base, store=store)
                    t0 = time.perf_counter()
                    downloader.fetch(target)
                    agent.append(time.perf_counter() - t0)
                    _install(store, target)
                    store.close()
                    store = ReleaseStore.open(state)
                    t0 = time.perf_counter()
                    result = store.recover()
                    recover.append(time.perf_counter() - t0)
                    assert result.release is not None
                    store.close()
                    shutil.rmtree(state)
    finally:
        server.shutdown()
        http.close()
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "benchmark": "agent_install",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "artifact": {"name": model.name, "bytes": size},
        "runs": args.runs,
        "plain_download_and_hash": _summary(plain, size),
        "agent_download_verify_admit": _summary(agent, size),
        "agent_recover_rehash_current": _summary(recover, size),
        "ratio_agent_to_plain_p50": statistics.median(agent) / statistics.median(plain),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def _install(store: ReleaseStore, target: TargetRef) -> None:
    """Make ``target`` the current release so ``recover()`` has something to re-verify."""
    now = datetime.now(UTC).replace(microsecond=0)
    assignment = Assignment(
        device_id="bench",
        version=1,
        release_id="rel",
        release_name="bench",
        release_version="1",
        targets=[target],
        issued_at=now,
        expires_at=now + timedelta(1),
    )
    envelope = sign_envelope(
        ASSIGNMENT_PAYLOAD_TYPE, assignment.model_dump(mode="json"), [generate_key_pair()]
    )
    signed = {target.path: SignedTarget(target.path, target.sha256, target.length, {})}
    record = store.begin_install(assignment, envelope, signed)
    store.mark_verified(record)
    store.stage(record)
    store.activate(record)
    store.commit(record)


if __name__ == "__main__":
    raise SystemExit(main())
