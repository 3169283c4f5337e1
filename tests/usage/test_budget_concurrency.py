"""300 concurrent requests against a key whose budget allows 100: at most 100 succeed, and the ledger, the
budget counter and the answers' X-AIG-Cost agree to the nano-dollar, with nothing left reserved."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select

from aiguardian.app import create_app
from aiguardian.core.db import Database
from aiguardian.usage.models import BudgetCounter, UsageRecord
from aiguardian.usage.prices import from_nanos
from tests.conftest import PG_URL, REDIS_URL, async_pg_url, make_account, truncate_all
from tests.server import ServerProcess
from tests.usage.conftest import ANSWER_COST, ANSWER_TOKENS, DEMO_PRICES, api_key, chat, usage_settings

REQUESTS = 300
ALLOWED = 100


async def totals(db: Database) -> tuple[Decimal, int, int, int]:
    async with db.session() as session:
        spent_ledger = await session.scalar(
            select(func.coalesce(func.sum(UsageRecord.cost), 0)).where(UsageRecord.status == "ok")
        )
        ok_rows = await session.scalar(select(func.count()).where(UsageRecord.status == "ok"))
        spent = await session.scalar(select(func.coalesce(func.sum(BudgetCounter.spent_nanos), 0)))
        reserved = await session.scalar(select(func.coalesce(func.sum(BudgetCounter.reserved_nanos), 0)))
    ledger_sum = spent_ledger if isinstance(spent_ledger, Decimal) else from_nanos(int(spent_ledger or 0))
    return ledger_sum, int(ok_rows or 0), int(spent or 0), int(reserved or 0)


def check(
    responses: list[httpx.Response], ledger_sum: Decimal, ok_rows: int, spent: int, reserved: int
) -> None:
    succeeded = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert 0 < len(succeeded) <= ALLOWED
    assert all(r.status_code == 429 for r in refused), {r.status_code for r in refused}
    assert all(r.json()["error"]["code"] == "TOKEN_BUDGET_EXCEEDED" for r in refused)
    answered = sum((Decimal(r.headers["X-AIG-Cost"]) for r in succeeded), Decimal(0))
    assert ok_rows == len(succeeded)
    assert ledger_sum == answered
    assert from_nanos(spent) == answered
    assert reserved == 0


async def test_300_concurrent_requests_against_a_budget_for_100(
    app: FastAPI, admin_headers: dict[str, str]
) -> None:
    member = await make_account(app)
    key_id, headers = await api_key(app, member)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
        created = await client.post(
            "/api/v1/budgets",
            json={
                "scope": "key",
                "subject_id": key_id,
                "period": "day",
                "limit_usd": str(ANSWER_COST * ALLOWED),
            },
            headers=admin_headers,
        )
        assert created.status_code == 201, created.text
        request = chat(max_tokens=ANSWER_TOKENS)  # the reservation is then exactly the answer's cost
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=request, headers=headers) for _ in range(REQUESTS))
        )
    await app.state.usage.ledger.flush()
    ledger_sum, ok_rows, spent, reserved = await totals(app.state.usage.db)
    check(list(responses), ledger_sum, ok_rows, spent, reserved)
    # With exact reservations nothing is refused that would have fit: exactly the budget's worth succeeds.
    assert ok_rows == ALLOWED


@pytest.mark.skipif(not (PG_URL and REDIS_URL), reason="needs AIG_TEST_DATABASE_URL and AIG_TEST_REDIS_URL")
async def test_300_requests_across_two_processes_on_postgres(tmp_path: Path, pg_url: str | None) -> None:
    assert pg_url is not None
    await truncate_all(async_pg_url(pg_url))
    settings = usage_settings(tmp_path / "setup", "postgres", pg_url)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        admin = await make_account(app, "admin")
        member = await make_account(app)
        key_id, headers = await api_key(app, member)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            created = await client.post(
                "/api/v1/budgets",
                json={
                    "scope": "key",
                    "subject_id": key_id,
                    "period": "day",
                    "limit_usd": str(ANSWER_COST * ALLOWED),
                },
                headers=admin.headers,
            )
            assert created.status_code == 201, created.text

    config = tmp_path / "aiguardian.yaml"
    config.write_text(yaml.safe_dump({"prices": json.loads(json.dumps(DEMO_PRICES))}))
    policy = tmp_path / "usage-guards.yaml"  # budgets, not content guards, are under test (see conftest)
    policy.write_text("policies:\n  default:\n    input: [messages]\n    output: []\n    stream: []\n")
    env = {
        "AIG_GUARDS_POLICY_FILE": str(policy),
        "AIG_CONFIG_FILE": str(config),
        "AIG_DATABASE_URL": pg_url,
        "AIG_REDIS_URL": REDIS_URL or "",
        "AIG_CACHE_NAMESPACE": f"aigtest-{uuid.uuid4().hex[:8]}",
        "AIG_RATE_LIMIT_DEFAULT": "100000/minute",
        "AIG_RATE_LIMIT_PER_IP": "100000/minute",
    }
    servers = [
        ServerProcess(tmp_path / f"p{i}", env={**env, "AIG_DATA_DIR": str(tmp_path / f"d{i}")})
        for i in range(2)
    ]
    for server in servers:
        server.start()
    try:
        for server in servers:
            server.wait_healthy(30)
        request = chat(max_tokens=ANSWER_TOKENS)
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            responses = await asyncio.gather(
                *(
                    http.post(servers[n % 2].base_url + "/v1/chat/completions", json=request, headers=headers)
                    for n in range(REQUESTS)
                )
            )
    finally:
        for server in servers:
            server.stop()  # a clean stop flushes each process's ledger writer
    db = Database(settings)
    try:
        ledger_sum, ok_rows, spent, reserved = await totals(db)
    finally:
        await db.close()
    check(list(responses), ledger_sum, ok_rows, spent, reserved)
