"""The ``aiguardian`` command.

Start-up matters (``aiguardian guards score`` is run once per scored file): a command imports what it needs
inside its own body, so the module itself imports only typer, and neither the settings, the app, the
database layer nor rich.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from aiguardian.core.errors import AIGError
from aiguardian.guards.cli import guards_app, score_stdin
from aiguardian.guards.tasks import TASKS

app = typer.Typer(
    name="aiguardian",
    help="AIGuardian: a self-hosted backend for AI applications.",
    no_args_is_help=True,
    add_completion=False,
)
audit_app = typer.Typer(help="Inspect the audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
admin_app = typer.Typer(help="Manage accounts and API keys from the command line.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(guards_app, name="guards")

T = TypeVar("T")

if TYPE_CHECKING:
    from rich.console import Console

    from aiguardian.identity.service import Identity
    from aiguardian.settings import Settings


@cache
def _console() -> Console:
    from rich.console import Console

    # soft_wrap: a message is one line even when stderr is not a terminal (rich would wrap it at 80 columns).
    return Console(stderr=True, soft_wrap=True)


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file (also AIG_CONFIG_FILE).")
]


def _settings(config: Path | None = None) -> Settings:
    from aiguardian.settings import CONFIG_FILE_ENV, SettingsError, load_settings

    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config)  # server workers read the same file
    try:
        return load_settings()
    except SettingsError as exc:
        _console().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    import asyncio

    return asyncio.run(factory())  # type: ignore[arg-type]


def _fail(message: str, code: int = 1) -> typer.Exit:
    _console().print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the version."""
    from aiguardian import __version__

    typer.echo(__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (AIG_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (AIG_PORT / API_PORT).")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes; more than 1 needs PostgreSQL.")
    ] = None,
    reload: Annotated[bool, typer.Option(help="Restart on code changes (development).")] = False,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR (AIG_LOG_LEVEL).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Start the server: prepare the data dir, apply migrations, serve HTTP."""
    for name, value in (("AIG_HOST", host), ("AIG_PORT", port), ("AIG_WORKERS", workers)):
        if value is not None:
            os.environ[name] = str(value)
    if log_level is not None:
        os.environ["AIG_LOG_LEVEL"] = log_level.upper()
    settings = _settings(config)

    from aiguardian.core.datadir import prepare_data_dir
    from aiguardian.core.db import Database, SQLiteInUseError, SQLiteProcessLock, sqlite_path
    from aiguardian.core.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if settings.is_sqlite and settings.workers > 1:
        raise _fail(
            f"--workers {settings.workers} needs PostgreSQL: SQLite allows one serving process. "
            "Set DATABASE_URL (and REDIS_URL) to run several."
        )
    prepare_data_dir(settings)
    if settings.workers > 1 and settings.metrics_multiproc_dir is None:
        _share_metrics_between_workers(settings)
    db_path = sqlite_path(settings.effective_database_url)
    if db_path is not None and not reload:
        try:
            SQLiteProcessLock(db_path).acquire()
        except SQLiteInUseError as exc:
            raise _fail(str(exc)) from None

    from aiguardian.core import migrate

    async def apply() -> None:
        db = Database(settings)
        try:
            await migrate.upgrade(db)
        finally:
            await db.close()

    try:
        _run(apply)
    except Exception as exc:
        raise _fail(
            f"cannot prepare the database ({_describe_db(settings)}): {type(exc).__name__}: {exc}"
        ) from None

    import uvicorn

    uvicorn.run(
        "aiguardian.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers if not reload else None,
        reload=reload,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        timeout_graceful_shutdown=30,
        # Realtime events are small JSON: a deflate context per socket held about 55 KiB more per idle
        # connection (74 against 17 KiB, bench/realtime/soak.py) for little gain.
        ws_per_message_deflate=False,
    )


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Apply database migrations up to the newest."""
    settings = _settings(config)
    from aiguardian.core import migrate as migrations
    from aiguardian.core.datadir import prepare_data_dir
    from aiguardian.core.db import Database

    prepare_data_dir(settings)

    async def apply() -> str | None:
        db = Database(settings)
        try:
            await migrations.upgrade(db)
            return await migrations.current_revision(db)
        finally:
            await db.close()

    try:
        revision = _run(apply)
    except Exception as exc:
        raise _fail(f"migration failed ({_describe_db(settings)}): {type(exc).__name__}: {exc}") from None
    _console().print(f"database at revision {revision} ({_describe_db(settings)})", highlight=False)


@app.command()
def doctor(config: ConfigOption = None) -> None:
    """Check settings, database, migrations and Redis; print what is fine and how to fix what is not."""
    from rich.console import Console
    from rich.table import Table

    from aiguardian.ops.doctor import run_checks
    from aiguardian.settings import SettingsError, load_settings

    try:
        settings = load_settings(config)
    except SettingsError as exc:
        checks = [("settings", False, str(exc), "fix the setting named above (see .env.example)")]
    else:
        checks = [("settings", True, "valid", "")]
        checks += _run(lambda: run_checks(settings))
    table = Table(title="AIGuardian doctor")
    table.add_column("check")
    table.add_column("state")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for name, fine, detail, fix in checks:
        table.add_row(name, "[green]ok[/green]" if fine else "[red]problem[/red]", detail, fix)
    Console().print(table)
    if not all(fine for _, fine, _, _ in checks):
        raise typer.Exit(1)


@app.command("guard-service")
def guard_service(
    name: Annotated[str, typer.Argument(help="A guard's name (injection, pii, bias, ...) or module:Class.")],
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8004,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    options: Annotated[
        str | None, typer.Option(help="The guard's options as a JSON object, e.g. '{\"threshold\": 0.8}'.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve one guard over HTTP (POST /check, GET /healthz), for `remote:` entries of a guard policy."""
    settings = _settings(config)
    from aiguardian.guards.remote import GuardServiceError, serve

    try:
        serve(name, host=host, port=port, options=options, settings=settings)
    except GuardServiceError as exc:
        raise _fail(str(exc), 2) from None


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain; exit 1 at the first row that was changed or removed."""
    settings = _settings(config)
    from aiguardian.audit.service import verify
    from aiguardian.core.db import Database

    async def check() -> object:
        db = Database(settings)
        try:
            return await verify(db)
        finally:
            await db.close()

    started = time.perf_counter()
    with _console().status("verifying the audit chain"):
        result = _run(check)
    from aiguardian.audit.schemas import VerifyResult

    assert isinstance(result, VerifyResult)
    elapsed = time.perf_counter() - started
    if result.ok:
        _console().print(f"[green]audit chain intact[/green]: {result.checked} rows in {elapsed:.2f}s")
        return
    _console().print(
        f"[red]audit chain broken[/red] at row {result.first_bad_id}: {result.problem} "
        f"({result.checked} rows verified before it)",
        highlight=False,
    )
    raise typer.Exit(1)


def _share_metrics_between_workers(settings: Settings) -> None:
    """Workers write their counters to files in the data dir so any worker's /metrics sums them all."""
    import shutil

    directory = settings.data_dir / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory.resolve())


@contextlib.asynccontextmanager
async def _identity(settings: Settings) -> AsyncIterator[Identity]:
    """The identity service on a migrated database, as the server would build it (memory cache and bus:
    this process only changes rows; running servers pick the change up when their cache entries expire,
    or at once for revocations made through the API)."""
    from aiguardian.core import migrate as migrations
    from aiguardian.core.bus import MemoryBus
    from aiguardian.core.cache import memory_backend
    from aiguardian.core.datadir import prepare_data_dir
    from aiguardian.core.db import Database
    from aiguardian.identity.service import Identity

    secrets = prepare_data_dir(settings)
    db = Database(settings)
    cache = memory_backend(settings)
    try:
        await migrations.upgrade(db)
        yield Identity(settings, secrets.secret_key, db, cache, MemoryBus())
    finally:
        await cache.close()
        await db.close()


def _password_or_generated(password: str | None) -> tuple[str, bool]:
    from aiguardian.identity.bootstrap import one_time_password

    return (password, False) if password else (one_time_password(), True)


@admin_app.command("create-user")
def admin_create_user(
    email: Annotated[str, typer.Option(help="The account's email address (its login name).")],
    role: Annotated[str, typer.Option(help="admin or member.")] = "member",
    password: Annotated[
        str | None, typer.Option(help="Omit to have a strong one generated and printed once.")
    ] = None,
    display_name: Annotated[str, typer.Option(help="Shown in the dashboard.")] = "",
    config: ConfigOption = None,
) -> None:
    """Create an account."""
    if role not in ("admin", "member"):
        raise _fail("--role must be admin or member", 2)
    settings = _settings(config)
    secret, generated = _password_or_generated(password)

    async def create() -> str:
        async with _identity(settings) as identity:
            user = await identity.create_user(email, secret, display_name, role)
            return user.id

    try:
        user_id = _run(create)
    except AIGError as exc:
        raise _fail(exc.message) from None
    _console().print(f"created {role} {email.strip().lower()} (id {user_id})", highlight=False)
    if generated:
        typer.echo(f"password: {secret}")


@admin_app.command("reset-password")
def admin_reset_password(
    email: Annotated[str, typer.Option(help="The account to reset.")],
    password: Annotated[
        str | None, typer.Option(help="Omit to have a strong one generated and printed once.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Set a new password and sign the account out everywhere."""
    settings = _settings(config)
    secret, generated = _password_or_generated(password)

    async def reset() -> bool:
        async with _identity(settings) as identity:
            user = await identity.find_user_by_email(email)
            if user is None:
                return False
            await identity.set_password(user, secret)
            return True

    try:
        found = _run(reset)
    except AIGError as exc:
        raise _fail(exc.message) from None
    if not found:
        raise _fail(f"no account with email {email}")
    _console().print(f"password reset for {email}; its sessions are signed out", highlight=False)
    if generated:
        typer.echo(f"password: {secret}")


@admin_app.command("create-key")
def admin_create_key(
    email: Annotated[str, typer.Option(help="The account the key acts as.")],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "cli",
    scopes: Annotated[str, typer.Option(help="Comma-separated: read, write, chat, admin.")] = "read,chat",
    rate_limit: Annotated[
        str | None, typer.Option(help="For example 60/minute; default from settings.")
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="Import this secret instead of generating one (12-200 characters).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create an API key and print it (it is shown once; only its hash is stored)."""
    settings = _settings(config)
    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    unknown = set(wanted) - {"read", "write", "chat", "admin"}
    if unknown or not wanted:
        raise _fail(f"--scopes: unknown scope(s) {', '.join(sorted(unknown)) or '(none given)'}", 2)
    if rate_limit is not None:
        from aiguardian.core.ratelimit import parse_limit

        try:
            parse_limit(rate_limit)
        except ValueError:
            raise _fail("--rate-limit must look like 60/minute", 2) from None

    async def create() -> str | None:
        async with _identity(settings) as identity:
            user = await identity.find_user_by_email(email)
            if user is None:
                return None
            _, made = await identity.create_key(user.id, name, wanted, rate_limit=rate_limit, secret=secret)
            return made

    try:
        made = _run(create)
    except AIGError as exc:
        raise _fail(exc.message) from None
    if made is None:
        raise _fail(f"no account with email {email}")
    _console().print(f"API key for {email} (scopes {','.join(wanted)}); shown once:", highlight=False)
    typer.echo(made)


def _describe_db(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.effective_database_url).render_as_string(hide_password=True)


def main() -> None:
    args = sys.argv[1:]
    if len(args) == 3 and args[:2] == ["guards", "score"] and args[2] in TASKS:
        # Timed with its start-up by the evaluation harness: typer's dispatch (it imports pydantic) is a
        # good part of that, and this command has no options to parse.
        score_stdin(args[2])
        return
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
