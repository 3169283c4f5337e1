"""Batched, append-only audit writes off the request path.

Requests only append to an in-memory queue. One task writes the queue in batches, chaining each row to the
last stored hash. If the database is down the rows wait and are retried; on shutdown whatever cannot be
written is spooled to a file in the data dir and written at the next start, so no row is lost.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import orjson
import structlog
from sqlalchemy import insert, select, text

from aiguardian.audit.chain import GENESIS, AuditEntry, link
from aiguardian.audit.models import AuditRecord
from aiguardian.core.batch import BatchWriter
from aiguardian.core.db import Database

log = structlog.get_logger("aiguardian.audit")

# Any constant: the same in every process that appends to the chain.
_PG_CHAIN_LOCK = 0x41494722


class AuditWriter(BatchWriter[AuditEntry]):
    name = "audit"

    def __init__(
        self,
        db: Database,
        *,
        batch_size: int,
        flush_interval: float,
        queue_max: int,
        spool_path: Path,
    ) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval, queue_max=queue_max)
        self.db = db
        self.spool_path = spool_path

    async def _before_start(self) -> None:
        self._load_spool()

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
