"""A loopback HTTP proxy between a real agent and a real control plane that counts the
bytes of every target response (what a metered link bills) and can play a hostile mirror:
flip a bit in range answers, alter chunk manifests, or drop ``Range`` (a server without it).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from protocol import paths

_NOT_FORWARDED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A device that drops a response it does not want (a 200 to its range request)
        resets the connection: expected here, not worth a traceback."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            super().handle_error(request, client_address)


@dataclass(frozen=True)
class TargetHit:
    path: str
    range: str | None
    status: int
    body_bytes: int


class ByteCountingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.hits: list[TargetHit] = []
        self.flip_range_bits = False  # a mirror corrupting the chunks a delta fetches
        self.alter_manifests = False  # a mirror altering chunk manifests
        self.drop_range = False  # a server (or cache) that ignores Range
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=120)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                target = self.path.startswith(paths.REPO_TARGETS + "/")
                asked_range = headers.get("Range") or headers.get("range")
                if target and proxy.drop_range:
                    headers = {k: v for k, v in headers.items() if k.lower() != "range"}
                response = proxy._http.request(
                    self.command, proxy.upstream + self.path, headers=headers, content=body
                )
                content = response.content
                if target and response.status_code == 206 and proxy.flip_range_bits:
                    content = content[:-1] + bytes([content[-1] ^ 1])
                if target and self.path.endswith(".chunks") and proxy.alter_manifests:
                    content = content[:-1] + bytes([content[-1] ^ 1])
                if target:
                    with proxy._lock:
                        proxy.hits.append(
                            TargetHit(self.path, asked_range, response.status_code, len(content))
                        )
                self.send_response(response.status_code)
                for k, v in response.headers.items():
                    if k.lower() not in _NOT_FORWARDED and k.lower() != "content-encoding":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def target_bytes(self, since: int = 0) -> int:
        """Bytes of target bodies (artifacts, ranges, chunk manifests) sent since hit ``since``."""
        with self._lock:
            return sum(h.body_bytes for h in self.hits[since:])

    def mark(self) -> int:
        with self._lock:
            return len(self.hits)

    def since(self, mark: int) -> list[TargetHit]:
        with self._lock:
            return list(self.hits[mark:])

    def __enter__(self) -> ByteCountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()
