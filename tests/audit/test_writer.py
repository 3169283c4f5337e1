"""The audit writer loses nothing: rows wait while the database is down and are spooled at shutdown."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select

from aiguardian.audit.chain import AuditEntry
from aiguardian.audit.models import AuditRecord
from aiguardian.audit.service import verify
from aiguardian.audit.writer import AuditWriter
from aiguardian.core import migrate
from aiguardian.core.db import Database
from aiguardian.settings import Settings


def entry(n: int) -> AuditEntry:
    return AuditEntry(
        trace_id=f"trace-{n}",
        created_at=datetime.now(UTC),
        actor=None,
        route="/api/v1/x",
        method="GET",
        status="ALLOWED",
        http_status=200,
        reason_codes=[],
        session_id=None,
        client_ip="127.0.0.1",
        latency_ms=0.5,
    )


def open_breaker(db: Database) -> None:
    db.breaker.reset_seconds = 3600
    for _ in range(db.breaker.threshold):
        db.breaker.record_failure("simulated outage")


async def stored_trace_ids(db: Database) -> list[str]:
    async with db.session() as session:
        return list((await session.scalars(select(AuditRecord.trace_id).order_by(AuditRecord.id))).all())


def make_writer(db: Database, spool: Path) -> AuditWriter:
    return AuditWriter(db, batch_size=10, flush_interval=0.05, queue_max=1000, spool_path=spool)


async def test_rows_wait_while_the_database_is_down(settings: Settings) -> None:
    db = Database(settings)
    await migrate.upgrade(db)
    writer = make_writer(db, settings.data_dir / "spool.jsonl")
    try:
        open_breaker(db)
        for n in range(25):
            writer.submit(entry(n))
        assert not await writer.flush_once()
        assert writer.depth == 25
        db.breaker.record_success()
        await writer.flush()
        assert writer.depth == 0
        assert await stored_trace_ids(db) == [f"trace-{n}" for n in range(25)]
        assert (await verify(db)).ok
    finally:
        await db.close()


async def test_shutdown_with_the_database_down_spools_and_next_start_writes(settings: Settings) -> None:
    spool = settings.data_dir / "audit-spool.jsonl"
    db = Database(settings)
    await migrate.upgrade(db)
    try:
        writer = make_writer(db, spool)
        await writer.start()
        open_breaker(db)
        for n in range(15):
            writer.submit(entry(n))
        await writer.close(deadline_seconds=0.3)
        assert spool.exists()
        assert len(spool.read_text().splitlines()) == 15

        db.breaker.record_success()
        restarted = make_writer(db, spool)
        await restarted.start()
        await restarted.close()
        assert not spool.exists()
        async with db.session() as session:
            assert await session.scalar(select(func.count()).select_from(AuditRecord)) == 15
        assert await stored_trace_ids(db) == [f"trace-{n}" for n in range(15)]
        assert (await verify(db)).ok
    finally:
        await db.close()


async def test_a_batch_mixing_rows_with_and_without_optional_fields_is_written_in_order(
    settings: Settings,
) -> None:
    """One batch holds rows that set action/target/guards and rows that do not: all are written, in order,
    the unset ones stored as SQL NULL, and the chain verifies."""
    db = Database(settings)
    await migrate.upgrade(db)
    writer = make_writer(db, settings.data_dir / "spool.jsonl")
    try:
        for n in range(6):
            row = entry(n)
            if n % 2:
                row.action, row.target = "post.create", f"post-{n}"
                row.guards = [{"guard": "pii", "direction": "input", "action": "redact", "score": 1.0}]
            writer.submit(row)
        assert await writer.flush_once()
        assert await stored_trace_ids(db) == [f"trace-{n}" for n in range(6)]
        async with db.session() as session:
            unset = await session.scalar(
                select(func.count()).select_from(AuditRecord).where(AuditRecord.guards.is_(None))
            )
        assert unset == 3
        assert (await verify(db)).ok
    finally:
        await db.close()
