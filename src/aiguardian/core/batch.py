"""Batched writes off the request path: requests append to a queue, one task writes it in batches.

Used by the audit log and the usage ledger. If the database is down the rows wait and are retried with a
growing pause; ``close`` writes what it can before a deadline and hands the rest to ``_spool`` (a subclass
may keep them in a file; the default drops them with an error in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Generic, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger("aiguardian.batch")


class BatchWriter(Generic[T]):
    name = "batch"

    def __init__(self, *, batch_size: int, flush_interval: float, queue_max: int) -> None:
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_max = queue_max
        self.written = 0
        self._pending: deque[T] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = asyncio.Lock()  # held while a batch is off the queue but not yet stored

    async def _write(self, batch: list[T]) -> None:
        raise NotImplementedError

    def _spool(self) -> None:
        log.error("rows not written at shutdown", writer=self.name, rows=len(self._pending))
        self._pending.clear()

    async def _before_start(self) -> None:
        return None

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def is_full(self) -> bool:
        return len(self._pending) >= self.queue_max

    def submit(self, item: T) -> None:
        self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self._wakeup.set()

    async def start(self) -> None:
        await self._before_start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-writer")

    async def close(self, deadline_seconds: float = 10.0) -> None:
        """Stop the loop and write everything still queued; spool what the database will not take."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_seconds
        if self._task is not None:
            self._wakeup.set()
            # The loop ends by itself once it sees _closing. Cancelling it while it writes would drop the
            # batch it has taken off the queue, so it is cancelled only if it overruns the deadline.
            await asyncio.wait({self._task}, timeout=deadline_seconds)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending and loop.time() < deadline:
            if not await self.flush_once():
                await asyncio.sleep(0.2)
        if self._pending:
            self._spool()

    async def flush(self) -> None:
        """Write everything queued now (used by tests and the shutdown path)."""
        while self._pending:
            if not await self.flush_once():
                return
        async with self._writing:  # and wait for a batch the background task is writing
            pass

    async def flush_once(self) -> bool:
        async with self._writing:
            batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
            if not batch:
                return True
            try:
                await self._write(batch)
            except Exception as exc:
                self._pending.extendleft(reversed(batch))
                log.warning(
                    "batch not written, will retry",
                    writer=self.name,
                    rows=len(batch),
                    error=type(exc).__name__,
                )
                return False
            self.written += len(batch)
            return True

    async def _run(self) -> None:
        backoff = self.flush_interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)
            self._wakeup.clear()
            ok = True
            while self._pending and ok:
                ok = await self.flush_once()
            backoff = self.flush_interval if ok else min(backoff * 2, 5.0)
