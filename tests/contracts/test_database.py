"""One behaviour suite for both databases: SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from aiguardian.audit.models import AuditRecord
from aiguardian.core import migrate
from aiguardian.core.breaker import BreakerState
from aiguardian.core.db import Database
from aiguardian.core.errors import DatabaseUnavailable
from aiguardian.settings import Settings


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    await migrate.upgrade(database)
    yield database
    await database.close()


def row(n: int) -> dict[str, object]:
    from datetime import UTC, datetime

    return {
        "trace_id": f"t{n}",
        "created_at": datetime.now(UTC),
        "route": "/x",
        "method": "GET",
        "status": "ALLOWED",
        "http_status": 200,
        "reason_codes": "[]",
        "latency_ms": 1.0,
        "prev_hash": "0" * 64,
        "hash": "0" * 64,
    }


async def count(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditRecord)) or 0)


async def test_migrations_reach_head_and_are_idempotent(db: Database) -> None:
    await migrate.upgrade(db)
    assert await migrate.is_up_to_date(db)


def test_head_revision_is_alembics() -> None:
    """The head read from the version files (no Alembic import on a worker's start) is Alembic's own."""
    from alembic.script import ScriptDirectory

    assert migrate.head_revision() == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


async def test_a_new_database_has_no_revision_until_migrated(settings: Settings) -> None:
    database = Database(settings)
    try:
        if not database.is_sqlite:
            pytest.skip("the shared PostgreSQL test database is migrated by other tests")
        assert await migrate.current_revision(database) is None
        assert not await migrate.is_up_to_date(database)
        await migrate.upgrade(database)
        assert await migrate.current_revision(database) == migrate.head_revision()
    finally:
        await database.close()


async def test_models_match_migrations(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from aiguardian.migrations.autogen import include_name
    from aiguardian.models import metadata

    # The same comparison `alembic revision --autogenerate` makes (env.py), so objects that only
    # migrations own, such as the per-database search structures of posts, are not differences.
    opts = {"include_name": include_name}
    async with db.engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c, opts=opts), metadata)
        )
    assert diff == []


async def test_transaction_commits(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(insert(AuditRecord), [row(1), row(2)])
    assert await count(db) == 2


async def test_transaction_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await session.execute(insert(AuditRecord), [row(1)])
            raise RuntimeError("caller failed")
    assert await count(db) == 0


async def test_query_errors_do_not_trip_the_breaker(db: Database) -> None:
    for _ in range(db.breaker.threshold + 2):
        with pytest.raises(IntegrityError):
            async with db.transaction() as session:
                await session.execute(insert(AuditRecord), [{**row(1), "id": 1}, {**row(2), "id": 1}])
    assert db.breaker.state is BreakerState.CLOSED


async def test_concurrent_writers_all_land(db: Database) -> None:
    async def write(n: int) -> None:
        async with db.transaction() as session:
            await session.execute(insert(AuditRecord), [row(n)])

    await asyncio.gather(*(write(n) for n in range(50)))
    assert await count(db) == 50


async def test_open_breaker_fails_fast_with_503(db: Database) -> None:
    for _ in range(db.breaker.threshold):
        db.breaker.record_failure("simulated outage")
    with pytest.raises(DatabaseUnavailable) as caught:
        await db.ping()
    assert caught.value.status_code == 503
    assert caught.value.reason_code.value == "E3_database_unavailable"
