"""The uvicorn server both Outpost servers run, with :class:`HttpLimits` enforced.

uvicorn parses HTTP with httptools (a hard dependency; ``http="auto"`` picks it), which
caps neither the header size nor the time a client may take to send them, and times out
no connection before its first request. :func:`limited_http_protocol` subclasses its
protocol to add, in the parser, before any route runs:

- a cap on the bytes of a request line plus headers (431 and close once over; the parser
  is never fed the excess, so an endless header costs at most the cap in memory);
- a header deadline from connection (or the end of the previous response) to the end of
  the headers (408 and close);
- a silence limit while a request body is expected (close; the app sees a disconnect);
- a connection cap (503 and close at once, before a byte is read);
- TCP keepalive and ``TCP_USER_TIMEOUT`` so half-open connections are dropped by the
  kernel (Linux).

:func:`server_config` builds the ``uvicorn.Config`` from those limits and raises the
process's soft open-file limit to what ``max_connections`` needs.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from asyncio import TimerHandle
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from protocol.http_limits import HttpLimits

__all__ = ["limited_http_protocol", "raise_open_file_limit", "server_config"]

log = logging.getLogger("outpost.http")

# file descriptors a server needs besides its connections: database, logs, models, blobs
_RESERVED_FDS = 64


def _plain_response(status: bytes, message: str, extra: bytes = b"") -> bytes:
    body = message.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: "
        + str(len(body)).encode()
        + b"\r\nconnection: close\r\n"
        + extra
        + b"\r\n"
        + body
    )


def limited_http_protocol(limits: HttpLimits) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with ``limits`` enforced (pass it as ``http=``)."""

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_headers = True
            self._header_bytes = 0
            self._header_timer: TimerHandle | None = None
            self._body_timer: TimerHandle | None = None

        # --- connection ------------------------------------------------------------

        # uvicorn declares the base with BaseTransport, which asyncio calls it with for a
        # stream socket only as a Transport; the narrower type is what this code uses.
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                log.warning(
                    "refusing a connection: %d open (max_connections); raise the limit or"
                    " add a replica",
                    len(self.connections),
                )
                transport.write(
                    _plain_response(
                        b"503 Service Unavailable",
                        "too many open connections; retry shortly",
                        b"retry-after: 1\r\n",
                    )
                )
                transport.close()
                self.transport = transport
                # no parser: a refused connection never parses (uvicorn's own
                # connection_lost drops the parser the same way, with the same ignore)
                self.parser = None  # type: ignore[assignment]
                return
            super().connection_made(transport)
            _tune_socket(transport, limits)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.parser is None:
                return
            if not self._in_headers:
                if self._body_timer is not None:
                    self._arm_body_timer()
                super().data_received(data)
                return
            room = limits.max_header_bytes - self._header_bytes
            if len(data) <= room:
                self._header_bytes += len(data)
                super().data_received(data)
                return
            # feed no more than the cap: the headers end within it, or the client is refused
            head, rest = data[:room], data[room:]
            self._header_bytes += len(head)
            if head:
                super().data_received(head)
            if self.transport.is_closing():
                return
            if self._in_headers and self._header_bytes >= limits.max_header_bytes:
                self._reject(
                    b"431 Request Header Fields Too Large",
                    f"request line and headers exceed {limits.max_header_bytes} bytes",
                )
                return
            self.data_received(rest)  # a body, or the next request's headers

        # --- parser callbacks ------------------------------------------------------

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().on_headers_complete()
            if self.cycle is not None and self.cycle.more_body:
                self._arm_body_timer()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_headers = True  # what comes next is the next request's headers
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self.pipeline:
                self._arm_header_timer()

        # --- timers ----------------------------------------------------------------

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(
                limits.header_timeout_seconds, self._header_deadline_passed
            )

        def _header_deadline_passed(self) -> None:
            self._header_timer = None
            if self._in_headers and not self.transport.is_closing():
                if self._header_bytes:
                    self._reject(
                        b"408 Request Timeout",
                        f"request headers took longer than {limits.header_timeout_seconds} s",
                    )
                else:
                    self.transport.close()  # idle: nothing to answer

        def _arm_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
            self._body_timer = self.loop.call_later(
                limits.body_idle_timeout_seconds, self._body_silence_passed
            )

        def _body_silence_passed(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or self._in_headers:
                return
            waiting_for_us = self.flow.read_paused or (
                self.cycle is not None and self.cycle.waiting_for_100_continue
            )
            if waiting_for_us:  # the app has not read yet: the silence is not the client's
                self._arm_body_timer()
                return
            log.info(
                "closing a connection: no request body bytes for %s s",
                limits.body_idle_timeout_seconds,
            )
            self.transport.close()

        def _cancel_timers(self) -> None:
            for timer in (self._header_timer, self._body_timer):
                if timer is not None:
                    timer.cancel()
            self._header_timer = self._body_timer = None

        def _reject(self, status: bytes, message: str) -> None:
            self._cancel_timers()
            self._in_headers = False
            if not self.transport.is_closing():
                self.transport.write(_plain_response(status, message))
                self.transport.close()

    return LimitedHttpToolsProtocol


def _tune_socket(transport: asyncio.Transport, limits: HttpLimits) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(limits.tcp_user_timeout_seconds // 2))
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(
                socket.IPPROTO_TCP,
                socket.TCP_USER_TIMEOUT,
                int(limits.tcp_user_timeout_seconds * 1000),
            )
    except OSError:  # a platform without these options: the timers above still apply
        pass


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never above the hard limit);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def server_config(
    app: Any, *, host: str, port: int, limits: HttpLimits, **options: Any
) -> uvicorn.Config:
    """The ``uvicorn.Config`` for an Outpost server: ``limits`` in the parser, the idle
    keep-alive timeout, and an open-file limit that fits ``max_connections`` (the cap is
    lowered, with a warning, when the process may not open that many files)."""
    nofile = raise_open_file_limit(limits.max_connections + _RESERVED_FDS)
    if nofile < limits.max_connections + _RESERVED_FDS:
        fitted = max(1, nofile - _RESERVED_FDS)
        log.warning(
            "open-file limit %d is too low for max_connections=%d; serving at most %d"
            " connections (raise LimitNOFILE in the service unit)",
            nofile,
            limits.max_connections,
            fitted,
        )
        limits = HttpLimits(**{**limits.__dict__, "max_connections": fitted})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=limited_http_protocol(limits),
        timeout_keep_alive=limits.keep_alive_seconds,
        backlog=min(2048, limits.max_connections),
        **options,
    )
