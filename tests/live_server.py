"""A real HTTP server for tests: an app under uvicorn on a free loopback port, in a
background thread, for as long as a ``with`` block lasts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import uvicorn
from fastapi import FastAPI

Lifespan = Literal["auto", "on", "off"]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 at a port the kernel picks; ``url`` is its
    base URL once entered."""

    def __init__(
        self, app: FastAPI, *, lifespan: Lifespan = "off", start_timeout_s: float = 10
    ) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan=lifespan,
            access_log=False,
            # log_config=None: uvicorn's dictConfig would close the handlers other libraries
            # installed (absl's closes pytest's captured stderr; `make unit` died of it)
            log_config=None,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self._start_timeout_s = start_timeout_s

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def port(self) -> int:
        port: int = self._server.servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@contextmanager
def serving(app: FastAPI, *, lifespan: Lifespan = "off") -> Iterator[str]:
    """The base URL of ``app`` served by a :class:`LiveServer` for the block's duration."""
    with LiveServer(app, lifespan=lifespan) as server:
        yield server.url
