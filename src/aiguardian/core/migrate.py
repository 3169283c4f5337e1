"""Alembic, driven from code: the same upgrade runs on start and from ``aiguardian migrate``."""

from __future__ import annotations

from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from aiguardian.core.db import Database

log = structlog.get_logger("aiguardian.migrate")

# Any constant works; it only has to be the same in every process that may migrate at once.
_PG_MIGRATION_LOCK = 0x41494721


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "aiguardian:migrations")
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection, target: str) -> tuple[str | None, str | None]:
    before = _current(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)
    return before, _current(connection)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(db: Database, target: str = "head") -> None:
    """Apply migrations; on PostgreSQL, processes starting together take turns through an advisory lock."""
    async with db.engine.begin() as connection:
        if not db.is_sqlite:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        before, after = await connection.run_sync(_upgrade, target)
    if before != after:
        log.info("database migrated", before=before, after=after, backend=db.backend)


async def current_revision(db: Database) -> str | None:
    async with db.session() as session:
        connection = await session.connection()
        result: Any = await connection.run_sync(_current)
        return result if isinstance(result, str) or result is None else str(result)


async def is_up_to_date(db: Database) -> bool:
    return await current_revision(db) == head_revision()
