"""Messages between the supervisor and a worker: one JSON object per line over a socket pair.

Either end may ask (``call``: an ``id``, an ``op`` and its ``args``; the answer names the ``id``
in ``re``, with ``ok`` and a ``result`` or an ``error``) or tell (``tell``: no ``id``, no answer).
Each ask runs in a task of its own, started in the order the asks arrive, so a slow one (a
drain) holds up none of the others; tells run in order, one at a time, each in a task that
waits for the one before it: the channel goes on reading meanwhile, so that it sees the other
end go away even while a tell waits (a worker's tells wait until its start is done, and a
start that never ends must not keep an orphan alive). Both ends are processes
of the same operator, started together: the channel trusts what it reads, but a line that is
no JSON object, or an op the handler does not know, is answered with an error, not obeyed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._log import log_event

LINE_LIMIT: Final = 64 * 1024 * 1024  # a metrics text of many backends fits in one line
Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class ChannelClosed(ConnectionError):
    """The other end went away (its process exited) before answering."""


class RemoteError(Exception):
    """The other end answered an ask with an error."""


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler) -> None:
        self._reader = reader
        self._writer = writer
        self._handler = handler
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_tell: asyncio.Task[None] | None = None  # the next tell runs after it
        self.closed = asyncio.Event()
        self._serving = asyncio.get_running_loop().create_task(self._serve(), name="omnixan-lb-channel")

    @classmethod
    async def open(cls, sock: socket.socket, handler: Handler) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer, handler)

    async def call(self, op: str, args: dict[str, Any], timeout: float | None = None) -> Any:
        """Ask the other end to run ``op``; its result, or :class:`RemoteError`/:class:`ChannelClosed`."""
        if self.closed.is_set():
            raise ChannelClosed(f"the channel is closed ({op} not sent)")
        self._next_id += 1
        ident = self._next_id
        answer = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer
        try:
            self._send({"id": ident, "op": op, "args": args})
            return await asyncio.wait_for(answer, timeout)
        finally:
            self._waiting.pop(ident, None)

    def tell(self, op: str, args: dict[str, Any]) -> None:
        """Tell the other end ``op``, expecting no answer (dropped if the channel is closed)."""
        if not self.closed.is_set():
            self._send({"op": op, "args": args})

    def _send(self, message: dict[str, Any]) -> None:
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def close(self) -> None:
        self._serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._serving
        self._closed()
        self._writer.close()

    def _closed(self) -> None:
        self.closed.set()
        for answer in self._waiting.values():
            if not answer.done():
                answer.set_exception(ChannelClosed("the other end went away before answering"))

    async def _serve(self) -> None:
        try:
            while True:
                try:
                    line = await self._reader.readline()
                except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
                    log_event("channel_read_failed", logging.ERROR, error=repr(exc))
                    return
                if not line:
                    return
                await self._dispatch(line)
        finally:
            self._closed()

    async def _dispatch(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            log_event("channel_bad_message", logging.ERROR, line=line[:200].decode("utf-8", "replace"))
            return
        if "re" in message:
            answer = self._waiting.get(message["re"])
            if answer is not None and not answer.done():
                if message.get("ok"):
                    answer.set_result(message.get("result"))
                else:
                    answer.set_exception(RemoteError(str(message.get("error"))))
            return
        op, args = message.get("op"), message.get("args")
        if not isinstance(op, str) or not isinstance(args, dict):
            log_event("channel_bad_message", logging.ERROR, line=line[:200].decode("utf-8", "replace"))
            return
        ident = message.get("id")
        loop = asyncio.get_running_loop()
        if ident is None:
            task = self._last_tell = loop.create_task(self._tell(self._last_tell, op, args))
        else:
            task = loop.create_task(self._answer(ident, op, args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell(self, previous: asyncio.Task[None] | None, op: str, args: dict[str, Any]) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # in order; whatever became of the one before
        try:
            await self._handler(op, args)
        except Exception as exc:
            log_event("channel_tell_failed", logging.ERROR, op=op, error=repr(exc))

    async def _answer(self, ident: object, op: str, args: dict[str, Any]) -> None:
        try:
            result = await self._handler(op, args)
        except Exception as exc:
            reply = {"re": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        else:
            reply = {"re": ident, "ok": True, "result": result}
        if not self.closed.is_set():
            self._send(reply)
