"""Request and response channels between the API process and the inference workers.

LitServe 0.2.19 routes every request and every response through a
``multiprocessing.Manager`` proxy queue: four round trips through the manager
process per request, plus a thread hop per response in the API process. We
measured about 3.3 ms of CPU per single-row request across the API process,
the worker and the manager. (Its ``fast_queue`` ZeroMQ option is inert in
this version: the config field it sets is misnamed.)

Here both directions are plain pipes, driven by the API process's event loop
without any helper thread:

- :class:`RequestChannel`: the API process appends framed requests to an
  in-process buffer and writes them with non-blocking ``os.write``; when the
  pipe is full it waits for writability (``add_writer``) instead of blocking,
  so it keeps reading responses meanwhile and the two pipes cannot deadlock.
  Workers read whole messages under a shared lock.
- :class:`PipeTransport`: workers write a response under a lock (messages from
  several workers never interleave); the API process's event loop reads when
  the pipe is readable (``add_reader``).

Together about 2 ms less CPU per request (see benchmarks/serving.py). With
several API server processes (``API_SERVERS``) each has its own request pipe
and its own response pipe.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pickle
import struct
import time
from collections import deque
from contextlib import suppress
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from queue import Empty
from typing import Any

from litserve.transport.base import MessageTransport

_PROTOCOL = pickle.HIGHEST_PROTOCOL
PIPE_BYTES = 1 << 20  # a 1,000-row request or response fits whole (Linux default is 64 KiB)
STOP_MESSAGE = (None, None, None, None)  # a request whose uid (item[1]) is None: LitServe's stop sentinel


def _pipe(ctx: BaseContext) -> tuple[Any, Any]:
    """A one-way pipe, enlarged where the OS allows, so big messages move in one write and one read."""
    reader, writer = ctx.Pipe(duplex=False)
    with suppress(OSError, AttributeError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        fcntl.fcntl(writer.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return reader, writer


class RequestChannel:
    """API servers -> workers. Quacks like the queue LitServe expects (``put``, ``get``, ``get_nowait``).

    One pipe per API server process (a request's first item, LitServe's ``response_queue_id``, picks
    it): the non-blocking writes below may be partial, and two processes writing partial frames into
    one pipe would interleave them. Each pipe has its own read lock; a worker takes the next request
    from whichever pipe is readable.
    """

    def __init__(self, ctx: BaseContext, api_servers: int = 1) -> None:
        self._pipes = [(*_pipe(ctx), ctx.Lock()) for _ in range(api_servers)]
        self._pending = bytearray()
        self._fd: int | None = None
        self._pipe_index = 0  # the pipe this API server writes (set at its first put)
        self._next_read = 0  # a worker starts its scan here, so no pipe starves

    # -- API process (event-loop thread only) --------------------------------------------------

    def put(self, item: Any) -> None:
        """Frame and queue ``item``; it is written at the end of this event-loop iteration.

        Requests arriving in the same iteration share one ``write`` (one worker wake-up).
        """
        payload = pickle.dumps(item, protocol=_PROTOCOL)
        was_idle = not self._pending
        if self._fd is None and isinstance(item, tuple) and isinstance(item[0], int):
            self._pipe_index = item[0] % len(self._pipes)  # LitServe's response_queue_id: this API server
        self._pending += struct.pack("!i", len(payload)) + payload  # the framing Connection.recv_bytes reads
        if was_idle:
            asyncio.get_running_loop().call_soon(self._write)

    def _write(self) -> None:
        if self._fd is None:
            self._fd = self._pipes[self._pipe_index][1].fileno()
            os.set_blocking(self._fd, False)
        if not self._pending:
            return
        try:
            written = os.write(self._fd, self._pending)
        except BlockingIOError:
            written = 0
        del self._pending[:written]
        loop = asyncio.get_running_loop()
        if self._pending:
            loop.add_writer(self._fd, self._write)
        else:
            loop.remove_writer(self._fd)

    # -- main process -------------------------------------------------------------------------

    def stop_workers(self, count: int, timeout: float = 5.0) -> bool:
        """Queue ``count`` stop messages (one per worker), after any requests still in the first pipe.

        Called by the main process once every API server has exited (no other
        writer left). Non-blocking writes with a deadline: a full pipe whose
        readers are gone cannot hang the shutdown. True when all were written.
        """
        stop = pickle.dumps(STOP_MESSAGE, protocol=_PROTOCOL)
        pending = (struct.pack("!i", len(stop)) + stop) * count
        fd = self._pipes[0][1].fileno()
        os.set_blocking(fd, False)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            try:
                pending = pending[os.write(fd, pending) :]
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                return False
        return not pending

    # -- workers --------------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next request; raises ``queue.Empty`` after ``timeout`` seconds (or at once if not ``block``)."""
        if len(self._pipes) == 1:
            return self._get_one(self._pipes[0], block, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        readers = [reader for reader, _, _ in self._pipes]
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = set(wait(readers, 0.0 if not block else remaining))
            count = len(self._pipes)
            for step in range(count):
                index = (self._next_read + step) % count
                reader, _, lock = self._pipes[index]
                if reader not in ready:
                    continue
                # another worker may be reading this pipe: wait briefly for its lock rather than spin
                if not lock.acquire(True, 0.01):
                    continue
                try:
                    if not reader.poll(0):
                        continue
                    data = reader.recv_bytes()
                finally:
                    lock.release()
                self._next_read = index + 1
                return pickle.loads(data)
            if not block or (deadline is not None and time.monotonic() >= deadline):
                raise Empty

    @staticmethod
    def _get_one(pipe: tuple[Any, Any, Any], block: bool, timeout: float | None) -> Any:
        reader, _, lock = pipe
        deadline = None if timeout is None else time.monotonic() + timeout
        if not lock.acquire(block, timeout):
            raise Empty
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not block:
                remaining = 0.0
            if not reader.poll(remaining):
                raise Empty
            data = reader.recv_bytes()
        finally:
            lock.release()
        return pickle.loads(data)

    def get_nowait(self) -> Any:
        return self.get(block=False)


class _Many(list[Any]):
    """Several responses sent as one message."""


class PipeTransport(MessageTransport):
    """Workers -> API process responses over pipes (one per API server)."""

    def __init__(self, consumers: int, ctx: BaseContext) -> None:
        self._channels = [(*_pipe(ctx), ctx.Lock()) for _ in range(consumers)]
        self._backlog: deque[Any] = deque()
        self._nonblocking: set[int] = set()
        self._closed = False

    def send(self, item: Any, consumer_id: int) -> None:
        """Called in a worker: one whole message per write, under the channel's lock."""
        _, writer, lock = self._channels[consumer_id]
        payload = pickle.dumps(item, protocol=_PROTOCOL)
        with lock:
            writer.send_bytes(payload)

    def send_many(self, items: list[Any], consumer_id: int) -> None:
        """A batch's responses in one write (one wake-up of the API process)."""
        self.send(_Many(items) if len(items) > 1 else items[0], consumer_id)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        """Called in the API process: the next response, or None after about a second without one."""
        if self._closed:
            raise asyncio.CancelledError("transport closed")
        if self._backlog:
            return self._backlog.popleft()
        fd = self._reader_fd(consumer_id)
        try:
            header = os.read(fd, 4)  # usually a whole message is already waiting
            if not header:
                raise EOFError("response pipe closed")
        except BlockingIOError:
            if not await _readable(fd, 1.0 if timeout is None else min(timeout, 1.0)):
                return None
            header = b""
        (size,) = struct.unpack("!i", header + await _read_exactly(fd, 4 - len(header)))
        if size == -1:  # Connection.send_bytes framing for messages over 2 GiB
            (size,) = struct.unpack("!Q", await _read_exactly(fd, 8))
        message = pickle.loads(await _read_exactly(fd, size))
        if isinstance(message, _Many):
            self._backlog.extend(message[1:])
            return message[0]
        return message

    def _reader_fd(self, consumer_id: int) -> int:
        fd = self._channels[consumer_id][0].fileno()
        if fd not in self._nonblocking:
            os.set_blocking(fd, False)  # the event loop never waits inside a read, even for a large message
            self._nonblocking.add(fd)
        return fd

    def close(self, send_sentinel: bool = True) -> None:
        self._closed = True


async def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes from a non-blocking fd, awaiting readability in between (a writer is mid-message)."""
    buffer = bytearray()
    while len(buffer) < size:
        try:
            chunk = os.read(fd, size - len(buffer))
        except BlockingIOError:
            await _readable(fd, None)
            continue
        if not chunk:
            raise EOFError("response pipe closed")
        buffer += chunk
    return bytes(buffer)


async def _readable(fd: int, timeout: float | None) -> bool:
    """Wait until ``fd`` has data (True) or ``timeout`` passes (False), without a thread."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(ready, timeout)
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
