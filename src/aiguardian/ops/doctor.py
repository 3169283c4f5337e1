"""``aiguardian doctor``: each check says whether it is fine and, if not, how to fix it."""

from __future__ import annotations

import os
import tempfile

from aiguardian.core import migrate
from aiguardian.core.cache import describe_error, redis_backend
from aiguardian.core.db import Database
from aiguardian.settings import Settings

Check = tuple[str, bool, str, str]


def _data_dir(settings: Settings) -> Check:
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        return ("data dir", False, f"{path}: {exc.strerror}", "set AIG_DATA_DIR to a writable folder")
    return ("data dir", True, str(path.resolve()), "")


async def _database(settings: Settings) -> list[Check]:
    db = Database(settings)
    try:
        latency = await db.ping()
    except Exception as exc:
        cause = exc.__cause__ or exc
        await db.close()
        fix = (
            "start PostgreSQL or correct DATABASE_URL"
            if not settings.is_sqlite
            else "check that AIG_DATA_DIR is writable"
        )
        return [
            ("database", False, f"{db.backend}: {type(cause).__name__}: {cause}"[:300], fix),
            ("migrations", False, "not checked: no database", "fix the database first"),
        ]
    checks: list[Check] = [("database", True, f"{db.backend}, {latency:.1f} ms", "")]
    try:
        current = await migrate.current_revision(db)
        head = migrate.head_revision()
        if current == head:
            checks.append(("migrations", True, f"at {head}", ""))
        elif current is None:  # a new database: `serve` applies every migration before it starts
            checks.append(
                ("migrations", True, f"none applied yet; `aiguardian serve` applies up to {head}", "")
            )
        else:
            checks.append(
                (
                    "migrations",
                    False,
                    f"at {current or 'nothing'}, newest is {head}",
                    "run `aiguardian migrate`",
                )
            )
    finally:
        await db.close()
    return checks


async def _redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return ("redis", True, "not configured: cache, limits and events stay in this process", "")
    backend = redis_backend(settings)
    try:
        latency = await backend.ping()
    except Exception as exc:
        return ("redis", False, describe_error(exc), "start Redis or correct REDIS_URL")
    finally:
        await backend.close()
    return ("redis", True, f"{latency:.1f} ms", "")


def _scale_out(settings: Settings) -> Check:
    if settings.is_sqlite:
        if settings.workers > 1:
            return ("processes", False, "SQLite with several workers", "set DATABASE_URL to PostgreSQL")
        return ("processes", True, "one process (SQLite)", "")
    if settings.secret_key is None:
        return (
            "secret key",
            False,
            "generated per data dir: processes on other machines will not share it",
            "set AIG_SECRET_KEY to the same value on every machine",
        )
    if not settings.redis_url and settings.workers > 1:
        return (
            "processes",
            False,
            "several workers without Redis",
            "set REDIS_URL so limits hold across them",
        )
    return ("processes", True, f"{settings.workers} worker(s), shared secret key", "")


async def run_checks(settings: Settings) -> list[Check]:
    checks = [_data_dir(settings)]
    checks += await _database(settings)
    checks.append(await _redis(settings))
    checks.append(_scale_out(settings))
    if os.geteuid() == 0 and settings.host not in ("127.0.0.1", "localhost", "::1"):
        checks.append(("user", False, "running as root on a public interface", "run as an unprivileged user"))
    return checks
