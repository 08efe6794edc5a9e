"""Notice when a client hangs up, so that work done only for it stops.

A route that waits on a model (a whole, non-streamed generation, an embedding batch, the
first token of a stream) races that wait against the ASGI ``http.disconnect`` message;
when the client leaves first, the route's ``on_leave`` asks the model's thread to stop
(it checks between tokens or batches) and :class:`ClientGoneError` ends the request,
which the error handler logs as one short line.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import Request

from edge_agent.errors import ClientGoneError

T = TypeVar("T")


async def client_left(request: Request) -> None:
    """Return once the client has closed the connection (the request body already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_client_leaves(
    request: Request, work: Awaitable[T], on_leave: Callable[[], None], what: str
) -> T:
    """Await ``work``; if the client leaves first, call ``on_leave`` and raise
    :class:`ClientGoneError` (``what`` names the cancelled work in its message)."""
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_left(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        job.cancel()
        on_leave()
        raise
    finally:
        watcher.cancel()
    if job.done():
        return job.result()
    on_leave()
    job.cancel()
    raise ClientGoneError(f"{request.method} {request.url.path}: the client went away; {what}")
