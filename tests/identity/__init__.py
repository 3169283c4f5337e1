"""Identity security tests. Helpers shared by the modules of this package live here."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import select

from aiguardian.app import create_app
from aiguardian.identity.models import ApiKey, RefreshToken, User
from tests.conftest import async_pg_url, make_settings, truncate_all

# A valid key body; rejected requests send it so that only the credential can be why nothing was made.
KEY_BODY = {"name": "probe", "scopes": ["read"]}


def error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert (response.status_code, error_code(response)) == (status, code), response.text
    body = response.json()
    assert body["success"] is False
    assert body["data"] is None
    assert body["error"]["reason_codes"] == [code]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def key_header(secret: str) -> dict[str, str]:
    return {"X-API-Key": secret}


async def snapshot(app: FastAPI) -> dict[str, list[tuple[Any, ...]]]:
    """Every identity row, with the columns a write would change: equal snapshots mean nothing was written."""
    db = app.state.runtime.db
    async with db.session() as session:
        users = (
            await session.execute(
                select(User.id, User.email, User.role, User.is_active, User.password_hash, User.updated_at)
            )
        ).all()
        keys = (await session.execute(select(ApiKey.id, ApiKey.revoked_at, ApiKey.expires_at))).all()
        refresh = (
            await session.execute(select(RefreshToken.id, RefreshToken.used_at, RefreshToken.revoked_at))
        ).all()
    return {
        "users": sorted(tuple(r) for r in users),
        "api_keys": sorted(tuple(r) for r in keys),
        "refresh_tokens": sorted(tuple(r) for r in refresh),
    }


async def create_key(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> tuple[str, str]:
    """Make an API key over HTTP; return (key id, secret)."""
    payload = {"name": f"key-{uuid.uuid4().hex[:6]}", **body}
    response = await client.post("/api/v1/keys", headers=headers, json=payload)
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    return data["id"], data["key"]


async def login(client: httpx.AsyncClient, email: str, password: str) -> dict[str, Any]:
    response = await client.post("/api/v1/auth/login", json={"username": email, "password": password})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def audit_rows(
    app: FastAPI, client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Flush the audit writer, then read rows (newest first) through the API as an admin."""
    await app.state.audit_writer.flush()
    response = await client.get("/api/v1/audit", headers=headers, params={"limit": 500, **params})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["data"]["items"]
    return items


@contextlib.asynccontextmanager
async def custom_app(
    tmp_path: Path, backend: str, pg_url: str | None, **overrides: Any
) -> AsyncIterator[FastAPI]:
    """An app built with setting overrides, on a clean database of the test's backend."""
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    settings = make_settings(tmp_path / uuid.uuid4().hex[:8], backend, pg_url, **overrides)
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)
