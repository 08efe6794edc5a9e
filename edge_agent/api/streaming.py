"""Carry generated text from a model's worker thread to an async response, piece by piece.

The worker hands each piece to the event loop as soon as it exists (one
``call_soon_threadsafe`` per piece, nothing buffered); the consumer cancels by flag, which
the worker checks between pieces and answers by closing the generation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

from edge_agent.runtime import TextPiece


class _End:
    pass


_END = _End()


class PieceStream:
    """One generation's pieces, produced on a worker thread and read on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[TextPiece | BaseException | _End] = asyncio.Queue()
        self._cancelled = threading.Event()
        self._finished = False

    # --- worker side --------------------------------------------------------------------

    def pump(self, produce: Callable[[], Iterator[TextPiece]]) -> None:
        """Run the generation and forward its pieces; runs on the model's thread."""
        pieces: Iterator[TextPiece] | None = None
        try:
            if self._cancelled.is_set():
                return
            pieces = produce()
            for piece in pieces:
                self._put(piece)
                if self._cancelled.is_set():
                    break
        except Exception as e:
            self._put(e)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            self._put(_END)

    def _put(self, item: TextPiece | BaseException | _End) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            self._cancelled.set()

    # --- event-loop side ----------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the worker to stop after the piece it is generating."""
        self._cancelled.set()

    async def next(self) -> TextPiece | None:
        """The next piece, or None at the end; re-raises the generation's error."""
        if self._finished:
            return None
        item = await self._queue.get()
        if isinstance(item, _End):
            self._finished = True
            return None
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        return item
