"""The audit log over HTTP: every request is a row; filters, cursor, limits; admin only."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, update

from aiguardian.audit.models import AuditRecord
from aiguardian.audit.service import verify
from tests.conftest import Account


async def flush(app: FastAPI) -> None:
    await app.state.audit_writer.flush()


async def audit_rows(client: httpx.AsyncClient, headers: dict[str, str], **params: object) -> dict:  # type: ignore[type-arg]
    response = await client.get("/api/v1/audit", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response.json()["data"]  # type: ignore[no-any-return]


async def test_every_request_becomes_an_audit_row(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    ids = [uuid.uuid4().hex for _ in range(30)]
    await asyncio.gather(*(client.get("/api/v1/status", headers={"X-Request-ID": i}) for i in ids))
    await flush(app)
    page = await audit_rows(client, admin_headers, route="/api/v1/status", limit=500)
    assert {row["trace_id"] for row in page["items"]} >= set(ids)
    row = next(r for r in page["items"] if r["trace_id"] == ids[0])
    assert row["status"] == "ALLOWED"
    assert row["http_status"] == 200
    assert row["method"] == "GET"
    assert row["client_ip"] == "127.0.0.1"
    assert row["timestamp"].endswith("Z")
    assert row["latency_ms"] >= 0


async def test_blocked_and_error_rows_carry_reason_codes(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.get("/api/v1/nope", headers={"X-Session-ID": "sess-1"})
    await client.get("/api/v1/audit")  # no credentials
    await flush(app)
    blocked = await audit_rows(client, admin_headers, status="BLOCKED")
    codes = {code for row in blocked["items"] for code in row["reason_codes"]}
    assert {"E2_not_found", "G0_auth_not_configured"} <= codes
    by_code = await audit_rows(client, admin_headers, reason_code="E2_not_found")
    assert [r["session_id"] for r in by_code["items"]] == ["sess-1"]


async def test_admin_requests_record_the_actor(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    await audit_rows(client, admin.headers)
    await flush(app)
    page = await audit_rows(client, admin.headers, actor=f"user:{admin.id}")
    assert page["items"]
    assert all(r["actor"] == f"user:{admin.id}" for r in page["items"])


async def test_cursor_pages_through_without_overlap(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for _ in range(25):
        await client.get("/healthz-missing")
    await flush(app)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, object] = {"route": "/healthz-missing", "limit": 10}
        if cursor:
            params["cursor"] = cursor
        page = await audit_rows(client, admin_headers, **params)
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 25
    assert seen == sorted(seen, reverse=True)


async def test_limit_is_capped(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    app.state.runtime.settings.audit_page_max = 5
    for _ in range(8):
        await client.get("/api/v1/status")
    await flush(app)
    page = await audit_rows(client, admin_headers, limit=1000)
    assert len(page["items"]) == 5
    assert page["next_cursor"]


async def test_route_prefix_filter(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.get("/api/v1/status")
    await client.get("/api/v1/nope")
    await flush(app)
    page = await audit_rows(client, admin_headers, route="/api/v1/*")
    routes = {r["route"] for r in page["items"]}
    assert {"/api/v1/status", "/api/v1/nope"} <= routes


async def test_time_window_filter(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await client.get("/api/v1/status")
    await flush(app)
    assert (await audit_rows(client, admin_headers, since="2000-01-01T00:00:00Z"))["items"]
    assert not (await audit_rows(client, admin_headers, until="2000-01-01T00:00:00Z"))["items"]
    assert not (await audit_rows(client, admin_headers, since="2999-01-01T00:00:00+00:00"))["items"]


@pytest.mark.parametrize(
    "injection",
    ["' OR 1=1 --", '"; DROP TABLE audit_log; --', "%", "_", "\\", "1' UNION SELECT hash FROM audit_log --"],
)
async def test_injection_strings_in_filters_match_nothing_and_harm_nothing(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str], injection: str
) -> None:
    await client.get("/api/v1/status")
    await flush(app)
    for name in ("actor", "route", "reason_code"):
        page = await audit_rows(client, admin_headers, **{name: injection})
        assert page["items"] == [], name
    async with app.state.runtime.db.session() as session:
        stored = await session.scalar(select(func.count()).select_from(AuditRecord))
    assert stored is not None
    assert stored > 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "MAYBE"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"since": "yesterday"}, "query.since"),
    ],
)
async def test_bad_filters_are_422_naming_the_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], params: dict[str, object], field: str
) -> None:
    response = await client.get("/api/v1/audit", headers=admin_headers, params=params)
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == field


async def test_forged_cursor_is_422(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    response = await client.get("/api/v1/audit", headers=admin_headers, params={"cursor": "not-a-cursor!!"})
    assert response.status_code == 422


async def test_audit_requires_the_admin_token(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/audit")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "G0_auth_not_configured"
    wrong = await client.get("/api/v1/audit", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "G1_auth_invalid"
    assert (await client.get("/api/v1/audit", headers={"X-API-Key": "nope"})).status_code == 401


async def test_chain_verifies_and_detects_tampering(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    for _ in range(10):
        await client.get("/api/v1/status")
    await flush(app)
    db = app.state.runtime.db
    result = await verify(db)
    assert result.ok
    assert result.checked >= 10
    async with db.transaction() as session:
        await session.execute(update(AuditRecord).where(AuditRecord.id == 4).values(http_status=201))
    broken = await verify(db)
    assert not broken.ok
    assert broken.first_bad_id == 4


async def test_rows_from_many_concurrent_batches_keep_one_chain(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    writer = app.state.audit_writer
    writer.batch_size = 7
    await asyncio.gather(*(client.get("/api/v1/status") for _ in range(60)))
    await asyncio.gather(writer.flush(), writer.flush())
    result = await verify(app.state.runtime.db)
    assert result.ok
    assert result.checked >= 60


async def test_full_audit_queue_refuses_requests_fail_closed(app: FastAPI, client: httpx.AsyncClient) -> None:
    writer = app.state.audit_writer
    writer.queue_max = writer.depth
    response = await client.get("/api/v1/status")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "E3_audit_backlog"
