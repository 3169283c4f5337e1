"""A TCP proxy for fault tests: put it in front of a dependency, then ``cut()`` and ``restore()`` it.

It runs in the test's own event loop. ``cut()`` stops listening and aborts every open connection (both
sides, with a reset), which looks to the client like the dependency going away; new connections are
refused until ``restore()`` listens again on the same port.

``stall()`` is the other way a dependency fails: it keeps accepting connections but no byte gets through
either way (a network partition, a hung server), so clients wait on their own timeouts. ``restore()``
resets the stalled connections (their streams are out of step) and forwards again.
"""

from __future__ import annotations

import asyncio
import socket

_CHUNK = 64 * 1024


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, connect_timeout: float = 5.0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.connect_timeout = connect_timeout
        self.host = "127.0.0.1"
        self.port = _free_port()
        self._server: asyncio.Server | None = None
        self._stalled = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def start(self) -> FaultProxy:
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        return self

    async def cut(self) -> None:
        """Stop listening and reset every connection open through the proxy."""
        server, self._server = self._server, None
        if server is not None:
            server.close()  # stop accepting first, so nothing new slips in while we reset
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if server is not None:
            # After the resets: from Python 3.12 on, wait_closed() also waits for the open connections.
            await asyncio.wait_for(server.wait_closed(), 5)

    async def stall(self) -> None:
        """Keep accepting, forward nothing: every byte either way is read and dropped."""
        self._stalled = True
        await self.start()

    async def restore(self) -> None:
        """Listen again on the same port (after ``stall()``: reset the stalled connections first)."""
        if self._stalled:
            await self.cut()
            self._stalled = False
        await self.start()

    async def close(self) -> None:
        await self.cut()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client_writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            if self._stalled:
                while await client_reader.read(_CHUNK):
                    pass
                return
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port), self.connect_timeout
                )
            except (OSError, TimeoutError):
                client_writer.transport.abort()
                return
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
            )
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass  # cut(), or a side reset: the transports are aborted below
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    self._writers.discard(writer)
                    if not writer.transport.is_closing():
                        writer.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction. When it ends, end the other side too: closed on EOF, reset on an error."""
        try:
            while data := await reader.read(_CHUNK):
                if self._stalled:
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            writer.transport.abort()
        else:
            writer.close()
