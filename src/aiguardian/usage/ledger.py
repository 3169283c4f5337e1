"""The usage ledger writer: one row per gateway request, written in batches off the request path."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import insert

from aiguardian.core.batch import BatchWriter
from aiguardian.core.db import Database
from aiguardian.usage.models import UsageRecord


@dataclass(frozen=True)
class LedgerEntry:
    created_at: datetime
    trace_id: str
    user_id: str | None
    key_id: str | None
    model: str
    deployment: str | None
    provider: str | None
    prompt_tokens: int
    completion_tokens: int
    cost: Decimal
    latency_ms: float
    cache_hit: bool
    status: str  # ok, error, blocked
    stream: bool


class LedgerWriter(BatchWriter[LedgerEntry]):
    name = "usage"

    def __init__(self, db: Database, *, batch_size: int, flush_interval: float, queue_max: int) -> None:
        super().__init__(batch_size=batch_size, flush_interval=flush_interval, queue_max=queue_max)
        self.db = db

    async def _write(self, batch: list[LedgerEntry]) -> None:
        async with self.db.transaction() as session:
            await session.execute(insert(UsageRecord), [asdict(entry) for entry in batch])
