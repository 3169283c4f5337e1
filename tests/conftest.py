"""Fixtures: every app test runs on SQLite + memory, and again on PostgreSQL + Redis when
``AIG_TEST_DATABASE_URL`` and ``AIG_TEST_REDIS_URL`` are set (``.ci/run`` sets them)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aiguardian.app import create_app
from aiguardian.settings import Settings, load_settings

PG_URL = os.environ.get("AIG_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AIG_TEST_REDIS_URL")

_SETTING_NAMES = ("DATABASE_URL", "REDIS_URL", "API_PORT", "CIRCUIT_BREAKER_THRESHOLD", "CACHE_TTL")


def pytest_configure(config: pytest.Config) -> None:
    # The suite decides every setting itself: nothing from the developer's shell leaks in.
    for name in list(os.environ):
        if (name.startswith("AIG_") and not name.startswith("AIG_TEST_")) or name in _SETTING_NAMES:
            del os.environ[name]


BACKENDS = ["sqlite"] + (["postgres"] if PG_URL else [])


def async_pg_url(url: str) -> str:
    return load_settings(database_url=url).effective_database_url


class PostgresDatabases:
    """A throwaway database per test session, created from the server's ``AIG_TEST_DATABASE_URL``."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = async_pg_url(admin_url)
        self.created: list[str] = []

    async def _admin(self, statement: str) -> None:
        engine = create_async_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    def create(self) -> str:
        name = f"aig_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._admin(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PostgresDatabases | None]:
    if not PG_URL:
        yield None
        return
    databases = PostgresDatabases(PG_URL)
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def pg_url(pg_databases: PostgresDatabases | None) -> str | None:
    return pg_databases.create() if pg_databases else None


async def truncate_all(database_url: str) -> None:
    from aiguardian.models import metadata

    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            existing = set(
                (await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")))
                .scalars()
                .all()
            )
            tables = [t.name for t in metadata.sorted_tables if t.name in existing]
            if tables:
                await conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


def make_settings(tmp_path: Path, backend: str, pg_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "log_format": "json",
        "cache_namespace": f"aigtest-{uuid.uuid4().hex[:8]}",
        "audit_flush_interval": 0.05,
    }
    if backend == "postgres":
        assert pg_url is not None
        values["database_url"] = pg_url
        if REDIS_URL:
            values["redis_url"] = REDIS_URL
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def settings(tmp_path: Path, backend: str, pg_url: str | None) -> Settings:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    return make_settings(tmp_path, backend, pg_url)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@dataclass
class Account:
    id: str
    email: str
    password: str
    headers: dict[str, str]
    refresh_token: str


async def make_account(app: FastAPI, role: str = "member", email: str | None = None) -> Account:
    """A real account through the identity service, signed in; its access token in ``headers``."""
    identity = app.state.identity
    email = email or f"{role}-{uuid.uuid4().hex[:8]}@example.test"
    password = f"pw-{uuid.uuid4().hex}"
    user = await identity.create_user(email, password, role=role)
    _, pair = await identity.login(email, password)
    return Account(
        user.id, email, password, {"Authorization": f"Bearer {pair.access_token}"}, pair.refresh_token
    )


@pytest.fixture
async def admin(app: FastAPI) -> Account:
    return await make_account(app, "admin")


@pytest.fixture
async def member(app: FastAPI) -> Account:
    return await make_account(app, "member")


@pytest.fixture
def admin_headers(admin: Account) -> dict[str, str]:
    return admin.headers
