"""Batched, append-only audit writes off the request path.

Requests only append to an in-memory queue. One task writes the queue in batches, chaining each row to the
last stored hash. If the database is down the rows wait and are retried; on shutdown whatever cannot be
written is spooled to a file in the data dir and written at the next start, so no row is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from datetime import datetime
from pathlib import Path

import orjson
import structlog
from sqlalchemy import insert, select, text

from aiguardian.audit.chain import GENESIS, AuditEntry, link
from aiguardian.audit.models import AuditRecord
from aiguardian.core.db import Database

log = structlog.get_logger("aiguardian.audit")

# Any constant: the same in every process that appends to the chain.
_PG_CHAIN_LOCK = 0x41494722


class AuditWriter:
    def __init__(
        self,
        db: Database,
        *,
        batch_size: int,
        flush_interval: float,
        queue_max: int,
        spool_path: Path,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_max = queue_max
        self.spool_path = spool_path
        self.written = 0
        self._pending: deque[AuditEntry] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._writing = asyncio.Lock()  # held while a batch is off the queue but not yet stored

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def is_full(self) -> bool:
        return len(self._pending) >= self.queue_max

    def submit(self, entry: AuditEntry) -> None:
        self._pending.append(entry)
        if len(self._pending) >= self.batch_size:
            self._wakeup.set()

    async def start(self) -> None:
        self._load_spool()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-writer")

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
                log.warning("audit batch not written, will retry", rows=len(batch), error=type(exc).__name__)
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

    async def _write(self, batch: list[AuditEntry]) -> None:
        async with self.db.transaction() as session:
            if not self.db.is_sqlite:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_CHAIN_LOCK})
            prev = await session.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1))
            prev = prev or GENESIS
            rows = []
            for entry in batch:
                digest = link(prev, entry)
                rows.append(
                    {
                        **entry.hashed_fields(),
                        "action": entry.action,
                        "target": entry.target,
                        "created_at": entry.created_at,
                        "reason_codes": orjson.dumps(entry.reason_codes).decode(),
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
            await session.execute(insert(AuditRecord), rows)

    def _spool(self) -> None:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_path.open("ab") as handle:
            while self._pending:
                entry = self._pending.popleft()
                fields = entry.hashed_fields()
                handle.write(orjson.dumps(fields) + b"\n")
        log.error("database unavailable at shutdown; audit rows spooled", path=str(self.spool_path))

    def _load_spool(self) -> None:
        if not self.spool_path.exists():
            return
        spooled = self.spool_path.with_suffix(f".loading-{os.getpid()}")
        try:
            self.spool_path.replace(spooled)
        except FileNotFoundError:  # another worker took it a moment ago
            return
        count = 0
        for line in spooled.read_bytes().splitlines():
            if not line.strip():
                continue
            fields = orjson.loads(line)
            fields["created_at"] = datetime.fromisoformat(fields["created_at"].replace("Z", "+00:00"))
            self._pending.append(AuditEntry(**fields))
            count += 1
        spooled.unlink()
        log.warning("audit rows from the spool queued for writing", rows=count)
