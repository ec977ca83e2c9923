"""Request and response channels between the API process and the inference workers.

LitServe 0.2.19 routes every request and every response through a
``multiprocessing.Manager`` proxy queue: four round trips through the manager
process per request, plus a thread hop per response in the API process. We
measured that at about 3.3 ms of CPU per single-row request, split across
the API process, the worker and the manager. Its ``fast_queue`` (ZeroMQ)
option is inert in this version (the config field is misnamed).

Instead, requests go through a plain ``multiprocessing.Queue`` (a pipe; the
API process's put is non-blocking), and responses through one pipe per API
server that the API process's event loop watches directly (``add_reader``),
so no thread is involved in receiving. Workers write a response under a lock
so messages from several workers never interleave. About 1.9 ms less CPU per
request; see benchmarks/serving.py.
"""

from __future__ import annotations

import asyncio
import pickle
from multiprocessing.context import BaseContext
from typing import Any

from litserve.transport.base import MessageTransport


class PipeTransport(MessageTransport):
    """Worker -> API process responses over pipes (one per API server)."""

    def __init__(self, consumers: int, ctx: BaseContext) -> None:
        self._channels = [(*ctx.Pipe(duplex=False), ctx.Lock()) for _ in range(consumers)]
        self._closed = False

    def send(self, item: Any, consumer_id: int) -> None:
        """Called in a worker: one whole message per write, under the channel's lock."""
        _, writer, lock = self._channels[consumer_id]
        payload = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        with lock:
            writer.send_bytes(payload)

    async def areceive(self, consumer_id: int, timeout: float | None = None, block: bool = True) -> Any:
        """Called in the API process: the next response, or None after about a second without one."""
        if self._closed:
            raise asyncio.CancelledError("transport closed")
        reader = self._channels[consumer_id][0]
        if not reader.poll():
            loop = asyncio.get_running_loop()
            readable = loop.create_future()
            fd = reader.fileno()
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
            try:
                await asyncio.wait_for(readable, 1.0 if timeout is None else min(timeout, 1.0))
            except TimeoutError:
                return None
            finally:
                loop.remove_reader(fd)
        return pickle.loads(reader.recv_bytes())

    def close(self, send_sentinel: bool = True) -> None:
        self._closed = True
