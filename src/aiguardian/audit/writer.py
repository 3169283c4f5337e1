"""Batched, append-only audit writes off the request path.

Requests only append to an in-memory queue. One task writes the queue in batches, chaining each row to the
last stored hash. If the database is down the rows wait and are retried; on shutdown whatever cannot be
written is spooled to a file in the data dir and written at the next start, so no row is lost.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, cast

import orjson
from sqlalchemy import Table, insert, select, text

from aiguardian.audit.chain import GENESIS, AuditEntry, link
from aiguardian.audit.models import AuditRecord
from aiguardian.core import events
from aiguardian.core.batch import BatchWriter
from aiguardian.core.bus import EventBus
from aiguardian.core.clock import iso
from aiguardian.core.db import Database

# Any constant: the same in every process that appends to the chain.
_PG_CHAIN_LOCK = 0x41494722
_INSERT = insert(cast(Table, AuditRecord.__table__))


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
        bus: EventBus | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size, flush_interval=flush_interval, queue_max=queue_max, spool_path=spool_path
        )
        self.db = db
        self.bus = bus

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
                        # Every row names every column: one executemany takes one shape of parameters.
                        "guards": entry.guards,
                        "created_at": entry.created_at,
                        "reason_codes": orjson.dumps(entry.reason_codes).decode(),
                        "prev_hash": prev,
                        "hash": digest,
                    }
                )
                prev = digest
            # Through the table: the ORM's bulk insert costs twice the CPU.
            await session.execute(_INSERT, rows)
        # After the commit. Publishing never raises (the bus logs its failures): a retry would write twice.
        if self.bus is not None:
            appended = events.AuditAppended(
                user_id=None,
                count=len(batch),
                first_at=iso(batch[0].created_at),
                last_at=iso(batch[-1].created_at),
                head_hash=prev,
            )
            await events.publish(self.bus, appended)

    def _encode(self, item: AuditEntry) -> dict[str, Any]:
        return item.hashed_fields()

    def _decode(self, fields: dict[str, Any]) -> AuditEntry:
        fields["created_at"] = datetime.fromisoformat(fields["created_at"].replace("Z", "+00:00"))
        return AuditEntry(**fields)
