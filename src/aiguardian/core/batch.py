"""Batched writes off the request path: requests append to a queue, one task writes it in batches.

Used by the audit log and the usage ledger. If the database is down the rows wait and are retried with a
growing pause; ``close`` writes what it can before a deadline and spools the rest to a JSON-lines file in
the data dir (``spool_path``; a subclass says how a row becomes JSON and back), which the next ``start``
queues for writing again, so no row is lost. Without a spool file they are dropped with an error in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson
import structlog

T = TypeVar("T")

log = structlog.get_logger("aiguardian.batch")


class BatchWriter(Generic[T]):
    name = "batch"

    def __init__(
        self, *, batch_size: int, flush_interval: float, queue_max: int, spool_path: Path | None = None
    ) -> None:
        self.spool_path = spool_path
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

    def _encode(self, item: T) -> dict[str, Any]:
        """A row as JSON-ready fields, for the spool file."""
        raise NotImplementedError

    def _decode(self, fields: dict[str, Any]) -> T:
        """A row back from what ``_encode`` gave."""
        raise NotImplementedError

    def _spool(self) -> None:
        if self.spool_path is None:
            log.error("rows not written at shutdown", writer=self.name, rows=len(self._pending))
            self._pending.clear()
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        rows = len(self._pending)
        with self.spool_path.open("ab") as handle:
            while self._pending:
                handle.write(orjson.dumps(self._encode(self._pending.popleft())) + b"\n")
        log.error(
            "database unavailable at shutdown; rows spooled",
            writer=self.name,
            rows=rows,
            path=str(self.spool_path),
        )

    def _load_spool(self) -> None:
        if self.spool_path is None or not self.spool_path.exists():
            return
        loading = self.spool_path.with_suffix(f".loading-{os.getpid()}")
        try:
            self.spool_path.replace(loading)
        except FileNotFoundError:  # another worker took it a moment ago
            return
        count = 0
        for line in loading.read_bytes().splitlines():
            if line.strip():
                self._pending.append(self._decode(orjson.loads(line)))
                count += 1
        loading.unlink()
        log.warning("spooled rows queued for writing", writer=self.name, rows=count)

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
        self._load_spool()
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
