"""End to end: the real ``aiguardian`` process, started the way a user starts it.

Every test here runs subprocesses, so the module is ``slow``. Timings are printed (run with ``-s``),
never asserted.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aiguardian import __version__
from aiguardian.core.migrate import head_revision
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

DATA_DIR = "aiguardian-data"
REQUESTS = 1000
CONCURRENCY = 20

PG_ADMIN_URL = os.environ.get("AIG_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AIG_TEST_REDIS_URL")

E2E_BACKENDS = ["sqlite"] + (["postgres"] if PG_ADMIN_URL else [])

_SCRIPT = Path(sys.executable).with_name("aiguardian")
# The installed console script when there is one (it exercises the entry point), else the module.
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "aiguardian"]


# --- helpers ---------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any AIGuardian setting, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIG_") and key not in ("DATABASE_URL", "REDIS_URL", "API_PORT")
    }
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``aiguardian <args>``; stdout and stderr are merged into ``.stdout``."""
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def _async_url(url: str) -> str:
    parsed = make_url(url)
    driver = "postgresql+asyncpg" if parsed.drivername.startswith("postgres") else "sqlite+aiosqlite"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def run_sql(url: str, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement in its own transaction (outside any server) and return its rows, if any."""

    async def go() -> list[tuple[Any, ...]]:
        engine = create_async_engine(_async_url(url))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement), params or {})
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(go())


@dataclass
class ServerDatabase:
    """Where a server under test keeps its data: ``env`` for the process, ``url`` to query it after."""

    backend: str
    url: str
    env: dict[str, str]


class PostgresE2E:
    """Creates ``aig_e2e_<random>`` databases beside ``AIG_TEST_DATABASE_URL`` and drops them after."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def _admin(self, statement: str) -> None:
        async def go() -> None:
            engine = create_async_engine(_async_url(self.admin_url), isolation_level="AUTOCOMMIT")
            try:
                async with engine.connect() as conn:
                    await conn.execute(text(statement))
            finally:
                await engine.dispose()

        asyncio.run(go())

    def create(self) -> str:
        name = f"aig_e2e_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        plain = make_url(self.admin_url).set(drivername="postgresql", database=name)
        return plain.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.fixture
def postgres_e2e() -> Iterator[PostgresE2E]:
    if not PG_ADMIN_URL:
        pytest.skip("AIG_TEST_DATABASE_URL is not set")
    databases = PostgresE2E(PG_ADMIN_URL)
    yield databases
    databases.drop_all()


@pytest.fixture
def server_db(request: pytest.FixtureRequest, tmp_path: Path) -> ServerDatabase:
    """SQLite in ``<tmp_path>/aiguardian-data`` (the default), or a fresh PostgreSQL database + Redis."""
    backend = str(request.param)
    if backend == "sqlite":
        db_file = tmp_path / "aiguardian-data" / "aiguardian.db"
        return ServerDatabase(backend, f"sqlite:///{db_file}", {})
    databases: PostgresE2E = request.getfixturevalue("postgres_e2e")
    url = databases.create()
    env = {"DATABASE_URL": url, "AIG_CACHE_NAMESPACE": f"aige2e-{uuid.uuid4().hex[:8]}"}
    if REDIS_URL:
        env["REDIS_URL"] = REDIS_URL
    return ServerDatabase(backend, url, env)


def _refused(server: ServerProcess, timeout: float = 30.0) -> tuple[int, str]:
    """Start a server that is expected to give up; return its exit code and output."""
    server.start()
    try:
        code = server.wait_exit(timeout)
    finally:
        server.stop()  # only acts if it is, wrongly, still running
    return code, server.logs()


def _status(server: ServerProcess) -> dict[str, object]:
    response = httpx.get(server.base_url + "/api/v1/status", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True, body
    components: dict[str, object] = body["data"]["components"]
    return components


# --- first run --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, float]]:
    """``aiguardian serve`` in an empty folder with no settings at all."""
    workdir = tmp_path_factory.mktemp("first-run")
    server = ServerProcess(workdir)
    server.start()
    try:
        yield server, server.wait_healthy(timeout=30)
    finally:
        server.stop()


def test_first_run_serves_with_sqlite_and_memory_cache(first_run: tuple[ServerProcess, float]) -> None:
    server, elapsed = first_run
    print(f"\nfirst run: /healthz answered 200 {elapsed:.2f}s after the process started")

    components = _status(server)
    database = components["database"]
    assert isinstance(database, dict)
    assert database["state"] == "healthy", database
    assert database["detail"]["backend"] == "sqlite", database
    cache = components["cache"]
    assert isinstance(cache, dict)
    assert cache["state"] == "healthy", cache
    assert cache["detail"]["mode"] == "memory", cache

    data_dir = server.workdir / DATA_DIR
    assert (data_dir / "aiguardian.db").is_file()
    path = data_dir / "secret_key"
    assert path.is_file(), f"secret_key missing from {sorted(p.name for p in data_dir.iterdir())}"
    assert path.read_text().strip(), "secret_key is empty"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"secret_key: {oct(path.stat().st_mode)}"


def test_first_run_prints_one_time_admin_credentials_that_work(
    first_run: tuple[ServerProcess, float],
) -> None:
    server, _ = first_run
    logs = server.logs()
    email = re.search(r"email:\s+(\S+)", logs)
    password = re.search(r"password:\s+(\S+)", logs)
    assert email, logs
    assert password, logs
    assert logs.count(password.group(1)) == 1, "the one-time password must be shown exactly once"
    login = httpx.post(
        server.base_url + "/api/v1/auth/login",
        data={"username": email.group(1), "password": password.group(1)},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    token = login.json()["data"]["access_token"]
    me = httpx.get(
        server.base_url + "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert me.json()["data"]["role"] == "admin"


def test_second_server_on_the_same_data_dir_is_refused(first_run: tuple[ServerProcess, float]) -> None:
    server, _ = first_run
    code, output = _refused(ServerProcess(server.workdir))

    assert code != 0, output
    assert "already serving" in output, output
    assert "Traceback" not in output, output
    assert httpx.get(server.base_url + "/healthz", timeout=5).status_code == 200, "the first server died"


def test_several_workers_on_sqlite_are_refused(tmp_path: Path) -> None:
    code, output = _refused(ServerProcess(tmp_path, args=["--workers", "2"]))

    assert code != 0, output
    assert "PostgreSQL" in output, output
    assert "Traceback" not in output, output


# --- invalid settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["AIG_PORT", "API_PORT"])
def test_invalid_setting_stops_the_start_with_one_line(tmp_path: Path, name: str) -> None:
    server = ServerProcess(tmp_path, env={name: "abc"})
    if name != "AIG_PORT":
        del server.env["AIG_PORT"]  # AIG_PORT would win over the plain name
    code, output = _refused(server)

    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1, output
    assert "invalid setting" in lines[0], output
    assert "AIG_PORT" in lines[0] or "API_PORT" in lines[0], output  # the port setting, by either name
    assert "Traceback" not in output, output
    assert not (tmp_path / DATA_DIR).exists(), "the data dir was prepared despite the bad setting"


# --- 1,000 requests, SIGTERM, then the audit log ----------------------------------------------------------


async def _send_status_requests(base_url: str, request_ids: list[str]) -> list[str]:
    """GET /api/v1/status once per id, ``CONCURRENCY`` at a time; return what went wrong."""
    problems: list[str] = []
    pending = iter(request_ids)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=base_url, timeout=30, limits=limits) as client:

        async def worker() -> None:
            for request_id in pending:  # shared: each id is taken by exactly one worker
                response = await client.get("/api/v1/status", headers={"X-Request-ID": request_id})
                if response.status_code != 200:
                    problems.append(f"{request_id}: HTTP {response.status_code} {response.text[:200]}")
                elif response.headers.get("x-request-id") != request_id:
                    problems.append(f"{request_id}: echoed as {response.headers.get('x-request-id')}")

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return problems


def _verify(workdir: Path, db: ServerDatabase) -> tuple[int, str]:
    result = run_cli("audit", "verify", cwd=workdir, env=clean_env(**db.env))
    return result.returncode, result.stdout


@pytest.mark.parametrize("server_db", E2E_BACKENDS, indirect=True)
def test_every_request_is_audited_across_sigterm_and_the_chain_verifies(
    tmp_path: Path, server_db: ServerDatabase
) -> None:
    request_ids = [f"e2e-{uuid.uuid4().hex}" for _ in range(REQUESTS)]
    server = ServerProcess(tmp_path, env=server_db.env).start()
    try:
        server.wait_healthy(timeout=30)
        started = time.monotonic()
        problems = asyncio.run(_send_status_requests(server.base_url, request_ids))
        sent = time.monotonic() - started
        stop_started = time.monotonic()
        code = server.stop(signal.SIGTERM, timeout=30)
        stopping = time.monotonic() - stop_started
    finally:
        server.stop()
    print(
        f"\n{server_db.backend}: {REQUESTS} requests in {sent:.2f}s "
        f"({REQUESTS / sent:.0f}/s); exit {code} {stopping:.2f}s after SIGTERM"
    )
    output = server.logs()
    assert not problems, problems[:10]
    assert code in (0, -signal.SIGTERM), output[-3000:]
    assert "Traceback" not in output, output[-3000:]

    rows = run_sql(server_db.url, "SELECT id, trace_id, actor FROM audit_log ORDER BY id")
    stored = Counter(trace_id for _, trace_id, _ in rows)
    missing = [rid for rid in request_ids if stored[rid] == 0]
    doubled = [rid for rid in request_ids if stored[rid] > 1]
    assert not missing, f"{len(missing)} of {REQUESTS} requests have no audit row, e.g. {missing[:5]}"
    assert not doubled, f"{len(doubled)} requests have more than one audit row, e.g. {doubled[:5]}"

    code, output = _verify(tmp_path, server_db)
    assert code == 0, output
    assert "intact" in output, output

    # Change one row in the middle: verify names exactly that row.
    ids = [row_id for row_id, _, _ in rows]
    changed_id, original_actor = rows[len(rows) // 2][0], rows[len(rows) // 2][2]
    run_sql(server_db.url, "UPDATE audit_log SET actor = 'mallory' WHERE id = :id", {"id": changed_id})
    code, output = _verify(tmp_path, server_db)
    assert code == 1, output
    assert f"at row {changed_id}:" in output, output
    assert "Traceback" not in output, output

    # Put it back (the chain holds again), then remove a row: verify names the row after the gap.
    run_sql(
        server_db.url,
        "UPDATE audit_log SET actor = :actor WHERE id = :id",
        {"actor": original_actor, "id": changed_id},
    )
    code, output = _verify(tmp_path, server_db)
    assert code == 0, output
    removed = len(ids) // 3
    run_sql(server_db.url, "DELETE FROM audit_log WHERE id = :id", {"id": ids[removed]})
    code, output = _verify(tmp_path, server_db)
    assert code == 1, output
    assert f"at row {ids[removed + 1]}:" in output, output
    assert "Traceback" not in output, output


# --- PostgreSQL and Redis ---------------------------------------------------------------------------------


@pytest.mark.skipif(
    not (PG_ADMIN_URL and REDIS_URL), reason="needs AIG_TEST_DATABASE_URL and AIG_TEST_REDIS_URL"
)
@pytest.mark.parametrize("server_db", ["postgres"], indirect=True)
def test_status_reports_postgresql_and_redis(tmp_path: Path, server_db: ServerDatabase) -> None:
    assert "REDIS_URL" in server_db.env
    with ServerProcess(tmp_path, env=server_db.env) as server:
        elapsed = server.wait_healthy(timeout=30)
        print(f"\npostgresql + redis: /healthz answered 200 {elapsed:.2f}s after the process started")
        components = _status(server)

    database = components["database"]
    assert isinstance(database, dict)
    assert database["state"] == "healthy", database
    assert database["detail"]["backend"] == "postgresql", database
    cache = components["cache"]
    assert isinstance(cache, dict)
    assert cache["state"] == "healthy", cache
    assert cache["detail"]["mode"] == "memory+redis", cache
    assert cache["detail"]["redis"]["state"] == "up", cache


# --- the other commands -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [[], ["serve"], ["migrate"], ["doctor"], ["version"], ["audit"], ["audit", "verify"]],
    ids=lambda command: " ".join(command) or "aiguardian",
)
def test_help(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stdout
    assert "Usage:" in result.stdout, result.stdout
    assert "Traceback" not in result.stdout, result.stdout
    if not command:
        for name in ("serve", "migrate", "doctor", "version", "audit"):
            assert name in result.stdout, result.stdout
    assert not (tmp_path / DATA_DIR).exists(), "--help touched the data dir"


def test_version(tmp_path: Path) -> None:
    result = run_cli("version", cwd=tmp_path)

    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == __version__


def test_migrate_creates_the_database_at_head(tmp_path: Path) -> None:
    head = head_revision()
    result = run_cli("migrate", cwd=tmp_path)

    assert result.returncode == 0, result.stdout
    assert f"at revision {head}" in result.stdout, result.stdout
    db_file = tmp_path / DATA_DIR / "aiguardian.db"
    assert db_file.is_file()
    assert run_sql(f"sqlite:///{db_file}", "SELECT version_num FROM alembic_version") == [(head,)]
    assert run_sql(f"sqlite:///{db_file}", "SELECT count(*) FROM audit_log") == [(0,)]


def _doctor_rows(output: str) -> dict[str, str]:
    """``check -> state`` from the doctor's table (a row's first line holds both)."""
    rows: dict[str, str] = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) >= 4 and cells[1] and cells[2] in ("ok", "problem"):
            rows[cells[1]] = cells[2]
    return rows


def test_doctor_on_a_fresh_dir(tmp_path: Path) -> None:
    result = run_cli("doctor", cwd=tmp_path)
    rows = _doctor_rows(result.stdout)

    assert result.returncode == 0, result.stdout
    for name in ("database", "migrations", "redis"):
        assert rows.get(name) == "ok", result.stdout


def test_doctor_fails_when_redis_is_unreachable(tmp_path: Path) -> None:
    result = run_cli("doctor", cwd=tmp_path, env=clean_env(REDIS_URL="redis://127.0.0.1:1/0"))
    rows = _doctor_rows(result.stdout)

    assert result.returncode == 1, result.stdout
    assert rows.get("redis") == "problem", result.stdout
    assert rows.get("database") == "ok", result.stdout
    assert "Traceback" not in result.stdout, result.stdout
