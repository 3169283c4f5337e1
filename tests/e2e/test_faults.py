"""Fault tests: the database going away behind a proxy, and the Redis cache tier being killed.

Everything runs in-process (the app under ``LifespanManager``, requests through ``ASGITransport``), on
loopback only, and every wait is bounded. The database tests need ``AIG_TEST_DATABASE_URL``; the Redis test
starts its own ``redis-server`` and runs whenever that binary is on ``PATH``.

``ASGITransport`` does not enforce httpx timeouts (there is no socket), so every request is also bounded
with ``asyncio.wait_for``: a request that hangs fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from aiguardian.app import create_app
from aiguardian.core.breaker import BreakerState
from aiguardian.core.db import Database
from aiguardian.core.errors import DatabaseUnavailable
from aiguardian.ops import service as ops_service
from aiguardian.settings import Settings
from tests.conftest import PG_URL, async_pg_url, make_account, make_settings
from tests.faultproxy import FaultProxy
from tests.server import free_port

pytestmark = pytest.mark.slow

# A generous bound on any single request: proves nothing hangs, says nothing about speed.
REQUEST_BOUND_SECONDS = 10.0
# How long recovery may take before the test gives up.
RECOVERY_BOUND_SECONDS = 30.0

DB_OUTAGE = {"circuit_breaker_threshold": 3, "circuit_breaker_reset_seconds": 1, "db_timeout_seconds": 2}

needs_postgres = pytest.mark.skipif(not PG_URL, reason="AIG_TEST_DATABASE_URL is not set")
needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not on PATH"
)


# --- helpers -------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        application.state.test_admin = await make_account(application, "admin")
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=REQUEST_BOUND_SECONDS
        ) as http:
            yield application, http


async def get(
    client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, float]:
    """One bounded GET; returns the response and the seconds it took."""
    started = time.monotonic()
    response = await asyncio.wait_for(client.get(path, headers=headers), REQUEST_BOUND_SECONDS)
    return response, time.monotonic() - started


def admin_headers(app: FastAPI, request_id: str | None = None) -> dict[str, str]:
    headers = dict(app.state.test_admin.headers)
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    return headers


def assert_db_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == "E3_database_unavailable"
    assert body["error"]["status"] == "BLOCKED"
    assert body["metadata"]["request_id"] == response.headers["x-request-id"]


def breaker_state(status_body: dict[str, Any]) -> str:
    return str(status_body["data"]["components"]["database"]["detail"]["breaker"]["state"])


def breaker_gauges(exposition: str) -> dict[str, float]:
    """``aig_circuit_breaker_state{breaker="database"}`` as ``{state: value}``."""
    states: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition):
        if family.name != "aig_circuit_breaker_state":
            continue
        for sample in family.samples:
            if sample.labels.get("breaker") == "database":
                states[sample.labels["state"]] = sample.value
    return states


async def wait_until(condition: Callable[[], bool], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {bound}s")
        await asyncio.sleep(0.02)


@dataclass
class PgOutage:
    app: FastAPI
    client: httpx.AsyncClient
    proxy: FaultProxy
    settings: Settings
    direct: AsyncEngine  # straight to the server, not through the proxy: the test's own view


@contextlib.asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """``CREATE DATABASE aig_fault_<random>`` on the test server; dropped ``WITH (FORCE)`` afterwards."""
    assert PG_URL is not None
    admin_url = async_pg_url(PG_URL)
    name = f"aig_fault_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@contextlib.asynccontextmanager
async def pg_behind_proxy(tmp_path: Path, **overrides: Any) -> AsyncIterator[PgOutage]:
    async with fresh_pg_database() as db_url:
        target = make_url(db_url)
        proxy = FaultProxy(target.host or "127.0.0.1", target.port or 5432)
        await proxy.start()
        direct = create_async_engine(db_url)
        try:
            proxied = target.set(host=proxy.host, port=proxy.port).render_as_string(hide_password=False)
            settings = make_settings(tmp_path, "postgres", proxied, **{**DB_OUTAGE, **overrides})
            async with serving(settings) as (app, client):
                try:
                    yield PgOutage(app, client, proxy, settings, direct)
                finally:
                    # Let the app shut down against a reachable database whatever the test did.
                    await proxy.restore()
        finally:
            await proxy.close()
            await direct.dispose()


async def poll_until_recovered(outage: PgOutage) -> tuple[float, int]:
    """Poll (bounded) until the DB route and readiness answer 200; returns (seconds, requests made)."""
    restored = time.monotonic()
    deadline = restored + RECOVERY_BOUND_SECONDS
    attempts = 0
    first_ok: float | None = None
    while time.monotonic() < deadline:
        attempts += 1
        response, _ = await get(outage.client, "/api/v1/audit?limit=1", admin_headers(outage.app))
        if response.status_code == 200:
            first_ok = first_ok or time.monotonic() - restored
            ready, _ = await get(outage.client, "/readyz")
            if ready.status_code == 200:
                return first_ok, attempts
        else:
            assert_db_unavailable(response)
        await asyncio.sleep(0.1)
    pytest.fail(f"the service did not recover within {RECOVERY_BOUND_SECONDS}s of restore()")


# --- database outage -----------------------------------------------------------------------------------


@needs_postgres
async def test_database_outage_fails_fast_opens_breaker_and_recovers_without_losing_audit_rows(
    tmp_path: Path,
) -> None:
    async with pg_behind_proxy(tmp_path) as outage:
        app, client, proxy = outage.app, outage.client, outage.proxy
        threshold = outage.settings.circuit_breaker_threshold

        response, _ = await get(client, "/api/v1/audit", admin_headers(app))
        assert response.status_code == 200, response.text
        status, _ = await get(client, "/api/v1/status")
        assert breaker_state(status.json()) == "closed"

        await proxy.cut()
        cut_at = time.monotonic()

        outage_ids: list[str] = []
        elapsed: list[float] = []
        first_503: float | None = None
        for i in range(threshold + 3):
            request_id = f"fault-outage-{i}-{uuid.uuid4().hex[:8]}"
            response, took = await get(client, "/api/v1/audit", admin_headers(app, request_id))
            first_503 = first_503 or time.monotonic() - cut_at
            assert_db_unavailable(response)
            assert response.headers["x-request-id"] == request_id
            outage_ids.append(request_id)
            elapsed.append(took)
        print(
            f"\n[db outage] cut -> first 503: {first_503:.3f}s; "
            f"slowest 503: {max(elapsed):.3f}s (db timeout {outage.settings.db_timeout_seconds}s)"
        )

        # The breaker has opened: status reports it, readiness fails.
        status, _ = await get(client, "/api/v1/status", {"X-Request-ID": "fault-outage-status"})
        assert status.status_code == 200
        assert status.json()["data"]["components"]["database"]["state"] == "unhealthy"
        assert breaker_state(status.json()) in ("open", "half_open")
        assert app.state.runtime.db.breaker.times_opened >= 1
        outage_ids.append("fault-outage-status")
        ready, _ = await get(client, "/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False

        await proxy.restore()
        to_first_200, attempts = await poll_until_recovered(outage)
        print(f"[db outage] restore -> first 200: {to_first_200:.3f}s ({attempts} polls)")
        status, _ = await get(client, "/api/v1/status")
        assert breaker_state(status.json()) == "closed"

        # Nothing the service answered during the outage is missing from the audit log.
        deadline = time.monotonic() + RECOVERY_BOUND_SECONDS
        stored: set[str] = set()
        while time.monotonic() < deadline:
            async with outage.direct.connect() as conn:
                rows = await conn.execute(
                    text("SELECT trace_id FROM audit_log WHERE trace_id LIKE 'fault-outage-%'")
                )
                stored = {row[0] for row in rows}
            if stored >= set(outage_ids):
                break
            await asyncio.sleep(0.2)
        assert set(outage_ids) <= stored, f"audit rows lost: {sorted(set(outage_ids) - stored)}"
        async with outage.direct.connect() as conn:
            statuses = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT trace_id, http_status FROM audit_log WHERE trace_id LIKE 'fault-outage-%'"
                        )
                    )
                ).all()
            )
        assert all(statuses[rid] == 503 for rid in outage_ids if rid != "fault-outage-status")


@needs_postgres
async def test_metrics_show_the_database_breaker_open_during_an_outage(tmp_path: Path) -> None:
    async with pg_behind_proxy(tmp_path) as outage:
        app, client, proxy = outage.app, outage.client, outage.proxy

        metrics, _ = await get(client, "/metrics")
        assert breaker_gauges(metrics.text) == {"closed": 1.0, "half_open": 0.0, "open": 0.0}

        await proxy.cut()
        gauges: dict[str, float] = {}
        for _ in range(outage.settings.circuit_breaker_threshold + 2):
            response, _ = await get(client, "/api/v1/audit", admin_headers(app))
            assert_db_unavailable(response)
        # The breaker half-opens after reset_seconds; a failed call re-opens it. Scrape right after one.
        deadline = time.monotonic() + RECOVERY_BOUND_SECONDS
        while time.monotonic() < deadline:
            response, _ = await get(client, "/api/v1/audit", admin_headers(app))
            assert_db_unavailable(response)
            metrics, _ = await get(client, "/metrics")
            assert metrics.status_code == 200
            gauges = breaker_gauges(metrics.text)
            if gauges.get("open") == 1.0:
                break
        assert gauges == {"closed": 0.0, "half_open": 0.0, "open": 1.0}
        assert 'aig_circuit_breaker_state{breaker="database",state="open"} 1.0' in metrics.text

        await proxy.restore()
        await poll_until_recovered(outage)
        metrics, _ = await get(client, "/metrics")
        assert breaker_gauges(metrics.text) == {"closed": 1.0, "half_open": 0.0, "open": 0.0}


@needs_postgres
async def test_stalled_database_probe_timeouts_do_not_close_the_breaker(tmp_path: Path) -> None:
    """A database that accepts connections but never answers: callers wait on the db timeout.

    ``/readyz`` gives each probe ``PROBE_TIMEOUT_SECONDS``; with a longer db timeout the probe is cancelled
    first. A cancelled call says nothing about the database, so it must neither close a half-open breaker
    nor clear the failure count (it used to do both: the breaker closed while the database was still down,
    and every request went back to waiting the full db timeout).
    """
    db_timeout = ops_service.PROBE_TIMEOUT_SECONDS + 1
    async with pg_behind_proxy(tmp_path, db_timeout_seconds=db_timeout) as outage:
        app, client, proxy = outage.app, outage.client, outage.proxy
        db: Database = app.state.runtime.db
        writer = app.state.audit_writer
        threshold = outage.settings.circuit_breaker_threshold

        response, _ = await get(client, "/api/v1/audit", admin_headers(app))
        assert response.status_code == 200
        # Quiet the audit writer first: from here on only excluded paths (/readyz) are requested, so the
        # writer does not take the breaker's half-open probe away from the readiness probe.
        await wait_until(lambda: writer.depth == 0, RECOVERY_BOUND_SECONDS, "audit queue drained")

        await proxy.stall()
        stalled_at = time.monotonic()
        results = await asyncio.gather(
            *(asyncio.wait_for(db.ping(), REQUEST_BOUND_SECONDS) for _ in range(threshold)),
            return_exceptions=True,
        )
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        print(
            f"\n[db stall] {threshold} calls failed on the db timeout after {time.monotonic() - stalled_at:.3f}s"
        )
        assert db.breaker.state is BreakerState.OPEN
        await wait_until(
            lambda: db.breaker.state is BreakerState.HALF_OPEN, REQUEST_BOUND_SECONDS, "breaker half-open"
        )

        ready, took = await get(client, "/readyz")
        assert ready.status_code == 503
        assert ready.json()["components"]["database"]["detail"]["error"] == "timed out"
        print(f"[db stall] /readyz answered 503 in {took:.3f}s (probe timed out)")
        assert db.breaker.state is not BreakerState.CLOSED
        assert db.breaker.consecutive_failures >= threshold

        await proxy.restore()
        to_first_200, _ = await poll_until_recovered(outage)
        print(f"[db stall] restore -> first 200: {to_first_200:.3f}s")
        assert db.breaker.state is BreakerState.CLOSED


async def test_a_cancelled_database_call_is_not_counted_as_a_success(tmp_path: Path) -> None:
    """The same rule without a server: cancel a call in the half-open probe and in the closed state."""
    settings = make_settings(
        tmp_path, "sqlite", None, circuit_breaker_threshold=3, circuit_breaker_reset_seconds=0.1
    )
    db = Database(settings)
    never = asyncio.Event()

    async def hanging_call() -> None:
        async with db.session():
            await never.wait()  # stands for a database that does not answer

    try:
        for _ in range(3):
            db.breaker.record_failure("refused")
        await wait_until(lambda: db.breaker.state is BreakerState.HALF_OPEN, 5, "breaker half-open")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(hanging_call(), 0.05)
        assert db.breaker.state is BreakerState.HALF_OPEN  # not closed, and the probe slot is free again
        assert db.breaker.consecutive_failures == 3
        await db.ping()  # the next call is the probe; it succeeds and closes the breaker
        assert db.breaker.state is BreakerState.CLOSED

        db.breaker.record_failure("refused")
        db.breaker.record_failure("refused")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(hanging_call(), 0.05)
        assert db.breaker.consecutive_failures == 2
    finally:
        await db.close()


# --- Redis killed --------------------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` on a loopback port, no persistence; stopped by its own pid."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited with {self.proc.returncode}")
            client = aioredis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
            try:
                if await client.ping():
                    return self
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                pass
            finally:
                await client.aclose()
            await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not answer within 10s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@needs_redis_server
async def test_redis_killed_cache_falls_back_to_memory_and_returns_to_redis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    first = RedisServer(port, tmp_path / "redis-1")
    second = RedisServer(port, tmp_path / "redis-2")
    try:
        await first.start()
        settings = make_settings(tmp_path, "sqlite", None, redis_url=first.url, redis_retry_seconds=0.2)
        async with serving(settings) as (app, client):
            cache = app.state.runtime.cache
            prefix = f"{settings.cache_namespace}:"

            status, _ = await get(client, "/api/v1/status")
            assert status.status_code == 200
            component = status.json()["data"]["components"]["cache"]
            assert component["state"] == "healthy"
            assert component["detail"]["mode"] == "memory+redis"
            assert component["detail"]["redis"]["state"] == "up"

            assert first.proc is not None
            first.kill()
            killed_at = time.monotonic()

            for _ in range(3):
                status, _ = await get(client, "/api/v1/status")
                assert status.status_code == 200
                body = status.json()["data"]
                assert body["status"] == "degraded"
                assert body["components"]["cache"]["state"] == "degraded"
                assert body["components"]["cache"]["detail"]["mode"] == "memory+redis"
                assert body["components"]["cache"]["detail"]["redis"]["state"] == "down"
            ready, _ = await get(client, "/readyz")
            assert ready.status_code == 200  # a Redis outage degrades, it does not make the service unready
            assert cache.shared_up is False

            # The cache keeps working, from memory.
            await asyncio.wait_for(cache.set("during-outage", {"v": 1}, ttl=60), REQUEST_BOUND_SECONDS)
            assert await asyncio.wait_for(cache.get("during-outage"), REQUEST_BOUND_SECONDS) == {"v": 1}
            assert await asyncio.wait_for(cache.incr("outage-counter"), REQUEST_BOUND_SECONDS) == 1
            assert await asyncio.wait_for(cache.incr("outage-counter", 2), REQUEST_BOUND_SECONDS) == 3
            degraded_after = time.monotonic() - killed_at
            assert "redis unreachable" in capsys.readouterr().err

            await second.start()
            restarted = time.monotonic()
            deadline = restarted + RECOVERY_BOUND_SECONDS
            while not cache.shared_up and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert cache.shared_up, f"the cache did not return to Redis within {RECOVERY_BOUND_SECONDS}s"
            back_after = time.monotonic() - restarted
            assert "redis is back" in capsys.readouterr().err
            with capsys.disabled():
                print(
                    f"\n[redis kill] degraded, serving from memory {degraded_after:.3f}s after SIGKILL; "
                    f"back on Redis {back_after:.3f}s after restart"
                )

            key = f"after-restart-{uuid.uuid4().hex[:8]}"
            await cache.set(key, "on-redis-again", ttl=60)
            assert await cache.incr("counter-after-restart", 7) == 7
            direct = aioredis.from_url(second.url, socket_connect_timeout=2, socket_timeout=2)
            try:
                assert await direct.exists(prefix + key) == 1
                assert b"on-redis-again" in (await direct.get(prefix + key) or b"")
                assert int(await direct.get(prefix + "counter-after-restart") or 0) == 7
            finally:
                await direct.aclose()

            status, _ = await get(client, "/api/v1/status")
            component = status.json()["data"]["components"]["cache"]
            assert component["state"] == "healthy"
            assert component["detail"]["redis"]["state"] == "up"
    finally:
        first.stop()
        second.stop()
