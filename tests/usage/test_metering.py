"""Every gateway request is metered: a ledger row, X-AIG-Cost, budgets reserved before and settled after."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from aiguardian.app import create_app
from aiguardian.usage.service import BUDGET_EXCEEDED
from tests.conftest import async_pg_url, make_account, truncate_all
from tests.fakes.openai_upstream import OpenAIUpstream
from tests.usage.conftest import (
    ANSWER_COST,
    ANSWER_TOKENS,
    DEMO,
    api_key,
    chat,
    held,
    ledger,
    usage_settings,
)


async def create_budget(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/budgets", json=body, headers=headers)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_each_request_gets_a_ledger_row_and_its_cost_header(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    member = await make_account(app)
    key_id, headers = await api_key(app, member)
    response = await client.post("/v1/chat/completions", json=chat(), headers=headers)
    assert response.status_code == 200, response.text
    assert Decimal(response.headers["X-AIG-Cost"]) == ANSWER_COST
    embedded = await client.post("/v1/embeddings", json={"model": DEMO, "input": "hi"}, headers=headers)
    assert embedded.status_code == 200
    assert Decimal(embedded.headers["X-AIG-Cost"]) == 0  # input tokens are free in the test prices
    streamed = await client.post("/v1/chat/completions", json=chat(stream=True), headers=headers)
    assert streamed.status_code == 200
    assert f": X-AIG-Cost {ANSWER_COST}" in streamed.text

    rows = await ledger(app)
    assert [(r.status, r.stream, r.key_id, r.user_id) for r in rows] == [
        ("ok", False, key_id, member.id),
        ("ok", False, key_id, member.id),
        ("ok", True, key_id, member.id),
    ]
    assert rows[0].completion_tokens == ANSWER_TOKENS
    assert rows[0].cost == ANSWER_COST
    assert rows[0].deployment == "demo"
    assert rows[0].model == DEMO
    assert rows[2].cost == ANSWER_COST


async def test_usage_breakdowns_members_see_their_own_admins_everything(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    alice, bob = await make_account(app), await make_account(app)
    alice_key, alice_headers = await api_key(app, alice)
    _, bob_headers = await api_key(app, bob)
    for _ in range(2):
        assert (
            await client.post("/v1/chat/completions", json=chat(), headers=alice_headers)
        ).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat(), headers=bob_headers)).status_code == 200
    await app.state.usage.ledger.flush()

    own = (await client.get("/api/v1/usage", headers=alice.headers)).json()["data"]
    assert own["totals"]["requests"] == 2
    assert Decimal(own["totals"]["cost_usd"]) == 2 * ANSWER_COST
    assert [(g["key"], g["requests"]) for g in own["by_key"]] == [(alice_key, 2)]
    assert [g["key"] for g in own["by_user"]] == [alice.id]
    assert [(g["key"], g["requests"]) for g in own["by_model"]] == [(DEMO, 2)]
    assert len(own["by_day"]) == 1
    assert len(own["by_day"][0]["key"]) == 10

    denied = await client.get("/api/v1/usage", params={"user_id": bob.id}, headers=alice.headers)
    assert denied.status_code == 403

    everything = (await client.get("/api/v1/usage", headers=admin_headers)).json()["data"]
    assert everything["totals"]["requests"] == 3
    assert {g["key"] for g in everything["by_user"]} == {alice.id, bob.id}
    only_bob = (await client.get("/api/v1/usage", params={"user_id": bob.id}, headers=admin_headers)).json()
    assert only_bob["data"]["totals"]["requests"] == 1
    future = (
        await client.get("/api/v1/usage", params={"since": "2999-01-01T00:00:00Z"}, headers=admin_headers)
    ).json()
    assert future["data"]["totals"]["requests"] == 0


async def test_a_hard_budget_refuses_with_429_and_the_reservation_is_released(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    member = await make_account(app)
    key_id, headers = await api_key(app, member)
    budget = await create_budget(
        client, admin_headers, scope="key", subject_id=key_id, period="day", limit_usd=str(ANSWER_COST * 2)
    )
    request = chat(max_tokens=ANSWER_TOKENS)
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=request, headers=headers)).status_code == 200
    refused = await client.post("/v1/chat/completions", json=request, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "TOKEN_BUDGET_EXCEEDED"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert await held(app) == 0
    rows = await ledger(app)
    assert [r.status for r in rows] == ["ok", "ok", "blocked"]
    assert rows[2].cost == 0

    seen = (await client.get(f"/api/v1/budgets/{budget['id']}", headers=member.headers)).json()["data"]
    assert Decimal(seen["spent_usd"]) == 2 * ANSWER_COST
    assert Decimal(seen["reserved_usd"]) == 0
    other = await make_account(app)
    assert (await client.get(f"/api/v1/budgets/{budget['id']}", headers=other.headers)).status_code == 404
    assert (await client.get("/api/v1/budgets", headers=other.headers)).json()["data"]["items"] == []
    forbidden = await client.post(
        "/api/v1/budgets", json={"scope": "global", "limit_usd": "1"}, headers=member.headers
    )
    assert forbidden.status_code == 403

    # Raising the limit applies at once (the in-memory copy is dropped on the change event).
    await client.patch(f"/api/v1/budgets/{budget['id']}", json={"limit_usd": "1"}, headers=admin_headers)
    assert (await client.post("/v1/chat/completions", json=request, headers=headers)).status_code == 200
    deleted = await client.delete(f"/api/v1/budgets/{budget['id']}", headers=admin_headers)
    assert deleted.status_code == 200
    assert (await client.get("/api/v1/budgets", headers=admin_headers)).json()["data"]["items"] == []


async def test_a_soft_budget_warns_and_publishes_an_event(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    member = await make_account(app)
    _, headers = await api_key(app, member)
    budget = await create_budget(
        client,
        admin_headers,
        scope="user",
        subject_id=member.id,
        period="month",
        limit_usd="0.001",
        hard=False,
    )
    events: list[dict[str, Any]] = []
    app.state.runtime.bus.on(BUDGET_EXCEEDED, lambda _t, payload: events.append(payload))
    response = await client.post("/v1/chat/completions", json=chat(), headers=headers)
    assert response.status_code == 200
    assert response.headers["X-AIG-Budget-Warning"] == budget["id"]
    assert [e["budget_id"] for e in events] == [budget["id"]]
    assert await held(app) == 0


async def test_a_token_limit_alone_is_a_budget_too(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    member = await make_account(app)
    _, headers = await api_key(app, member)
    await create_budget(client, admin_headers, scope="global", period="total", limit_tokens=100)
    assert (
        await client.post("/v1/chat/completions", json=chat(max_tokens=50), headers=headers)
    ).status_code == 200
    refused = await client.post("/v1/chat/completions", json=chat(max_tokens=200), headers=headers)
    assert refused.json()["error"]["code"] == "TOKEN_BUDGET_EXCEEDED"


@contextlib.asynccontextmanager
async def upstream_app(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    spec = {
        "id": "fake",
        "model": "gpt-fake",
        "provider": "openai",
        "base_url": upstream.base_url,
        "upstream_model": "gpt-fake",
        "timeout": 5.0,
        "context_window": 50,
    }
    settings = usage_settings(
        tmp_path,
        backend,
        pg_url,
        deployments=[spec],
        gateway_max_retries=0,
        prices={"gpt-fake": {"input_per_mtok": 1000, "output_per_mtok": 1000}},
        **overrides,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 50001))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream(models=("gpt-fake",)) as fake:
        yield fake


async def _budgeted(app: FastAPI, client: httpx.AsyncClient) -> dict[str, str]:
    admin = await make_account(app, "admin")
    member = await make_account(app)
    _, headers = await api_key(app, member)
    await create_budget(client, admin.headers, scope="global", period="day", limit_usd="100")
    return headers


async def test_an_upstream_error_and_a_cut_stream_leave_no_reservation(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with upstream_app(tmp_path, backend, pg_url, upstream) as (app, client):
        headers = await _budgeted(app, client)
        fake = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}
        upstream.script("500")
        failed = await client.post("/v1/chat/completions", json=fake, headers=headers)
        assert failed.status_code == 502
        upstream.script("cut:2")
        cut = await client.post("/v1/chat/completions", json={**fake, "stream": True}, headers=headers)
        assert cut.status_code == 200
        assert "U3_upstream_stream_broken" in cut.text
        assert await held(app) == 0
        rows = await ledger(app)
        assert [(r.status, r.stream) for r in rows] == [("error", False), ("error", True)]
        assert rows[0].cost == 0
        assert rows[1].completion_tokens > 0
        assert rows[1].cost > 0


async def test_a_prompt_over_the_context_window_is_refused_before_any_upstream_call(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with upstream_app(tmp_path, backend, pg_url, upstream) as (app, client):
        headers = await _budgeted(app, client)
        big = {"model": "gpt-fake", "messages": [{"role": "user", "content": "word " * 100}]}
        refused = await client.post("/v1/chat/completions", json=big, headers=headers)
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "TOKEN_CONTEXT_EXCEEDED"
        assert upstream.requests == []
        assert [r.status for r in await ledger(app)] == ["blocked"]
        assert await held(app) == 0


async def test_trimming_drops_the_oldest_messages_but_keeps_the_system_prompt(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with upstream_app(tmp_path, backend, pg_url, upstream, context_overflow="trim") as (app, client):
        headers = await _budgeted(app, client)
        messages = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "word " * 30},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "hi"},
        ]
        response = await client.post(
            "/v1/chat/completions", json={"model": "gpt-fake", "messages": messages}, headers=headers
        )
        assert response.status_code == 200, response.text
        sent = upstream.requests[-1].body
        assert sent is not None
        assert [m["role"] for m in sent["messages"]] == ["system", "assistant", "user"]
