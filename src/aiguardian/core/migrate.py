"""Alembic, driven from code: the same upgrade runs on start and from ``aiguardian migrate``.

Alembic (and Mako under it) is imported only when there is something to migrate: a serving worker finds the
database at the head with one query, and saves the ~10 MB and the import time.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Connection

from aiguardian.core.db import Database

if TYPE_CHECKING:
    from alembic.config import Config

log = structlog.get_logger("aiguardian.migrate")

# Any constant works; it only has to be the same in every process that may migrate at once.
_PG_MIGRATION_LOCK = 0x41494721
_VERSIONS = Path(__file__).resolve().parents[1] / "migrations" / "versions"
_REVISION = re.compile(r'^(down_revision|revision)\s*(?::[^=]*)?=\s*["\']?([\w-]+|None)["\']?', re.MULTILINE)


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "aiguardian:migrations")
    return config


@functools.cache
def head_revision() -> str | None:
    """The newest revision shipped: the one no other revision names as its parent. Read from the version
    files' ``revision`` / ``down_revision`` lines (tests hold it equal to Alembic's own answer)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in _VERSIONS.glob("*.py"):
        for name, value in _REVISION.findall(script.read_text(encoding="utf-8")):
            if name == "revision":
                revisions.add(value)
            elif value != "None":
                parents.add(value)
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _upgrade(connection: Connection, target: str) -> tuple[str | None, str | None]:
    from alembic import command

    before = _current(connection)
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, target)
    return before, _current(connection)


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _version_query(db: Database) -> str:
    # Asked so that a new database (no alembic_version table yet) answers None instead of an error.
    if db.is_sqlite:
        exists = "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version')"
    else:
        exists = "to_regclass('alembic_version') IS NOT NULL"
    return f"SELECT CASE WHEN {exists} THEN 1 ELSE 0 END"


async def _read_revision(connection: Any, db: Database) -> str | None:
    if not (await connection.execute(text(_version_query(db)))).scalar():
        return None
    found = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    return str(found[0]) if len(found) == 1 else None


async def upgrade(db: Database, target: str = "head") -> None:
    """Apply migrations; on PostgreSQL, processes starting together take turns through an advisory lock."""
    if target == "head":
        async with db.engine.connect() as connection:
            if await _read_revision(connection, db) == head_revision():
                return
    async with db.engine.begin() as connection:
        if not db.is_sqlite:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        before, after = await connection.run_sync(_upgrade, target)
    if before != after:
        log.info("database migrated", before=before, after=after, backend=db.backend)


async def current_revision(db: Database) -> str | None:
    async with db.session() as session:
        return await _read_revision(session, db)


async def is_up_to_date(db: Database) -> bool:
    return await current_revision(db) == head_revision()
