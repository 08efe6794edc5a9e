"""A loopback HTTP proxy between a real agent and a real control plane that can lose an
answer: it forwards a request, lets the control plane act on it, and withholds the reply.

The device signs method, path and body, never the host, so its requests verify through
the proxy unchanged.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from protocol import paths

# hop-by-hop headers, and those the proxy recomputes
_NOT_FORWARDED = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class AckLosingProxy:
    """``url`` forwards to ``upstream``; :meth:`hold_status_ack` arms it to keep the answer
    to the next status report that matches, after the control plane has stored it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.status_posts: list[str] = []  # report_id of every status POST that went through
        self.held: dict[str, Any] | None = None  # the report whose answer was withheld
        self._hold: Callable[[dict[str, Any]], bool] | None = None
        self._held_event = threading.Event()
        self._release = threading.Event()
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
                request = proxy._http.build_request(
                    self.command, proxy.upstream + self.path, headers=headers, content=body
                )
                response = proxy._http.send(request, stream=True)
                try:
                    whole: bytes | None = None  # raw bytes, as the control plane sent them
                    if self.command == "POST" and self.path == paths.DEVICE_STATUS:
                        whole = b"".join(response.iter_raw())  # the report has been acted on
                        if proxy._should_hold(json.loads(body)):
                            proxy._held_event.set()
                            proxy._release.wait()
                            self.close_connection = True  # the answer is lost
                            return
                    elif "content-length" not in response.headers:
                        whole = b"".join(response.iter_raw())
                    self.send_response(response.status_code)
                    for k, v in response.headers.items():
                        if k.lower() not in _NOT_FORWARDED:
                            self.send_header(k, v)
                    size = len(whole) if whole is not None else response.headers["content-length"]
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if whole is not None:
                        self.wfile.write(whole)
                    else:
                        for chunk in response.iter_raw(1 << 20):
                            self.wfile.write(chunk)
                finally:
                    response.close()

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _should_hold(self, report: dict[str, Any]) -> bool:
        with self._lock:
            self.status_posts.append(str(report["report_id"]))
            if self._hold is None or not self._hold(report):
                return False
            self._hold = None
            self.held = report
            return True

    def hold_status_ack(self, when: Callable[[dict[str, Any]], bool]) -> None:
        """Withhold the answer to the next status report for which ``when(report)``."""
        with self._lock:
            self._hold = when

    def wait_held(self, timeout: float) -> dict[str, Any]:
        if not self._held_event.wait(timeout):
            raise AssertionError(f"no matching status report came through in {timeout} s")
        assert self.held is not None
        return self.held

    def __enter__(self) -> AckLosingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()
