"""TokenGuard fixtures: the demo model with a deterministic price, so every cost can be checked exactly."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from aiguardian.settings import Settings
from aiguardian.usage.models import BudgetCounter, UsageRecord
from aiguardian.usage.service import UsageService
from tests.conftest import Account, async_pg_url, make_settings, truncate_all

# The demo model answers "hi" with 10 words and reports them as 10 completion tokens, 1 prompt token.
DEMO = "aiguardian-demo"
DEMO_PRICES = {DEMO: {"input_per_mtok": 0, "output_per_mtok": 1000}}  # $0.001 per completion token
ANSWER_TOKENS = 10
ANSWER_COST = Decimal("0.010")


def usage_settings(tmp_path: Path, backend: str, pg_url: str | None, **overrides: Any) -> Settings:
    # Usage tests are about metering and budgets: the content guards (tens of ms of CPU per request when
    # 300 run at once) stay out, and a burst of 300 may wait longer than production's 5 s for a connection.
    policy = tmp_path / "usage-guards.yaml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text("policies:\n  default:\n    input: [messages]\n    output: []\n    stream: []\n")
    values: dict[str, Any] = {
        "prices": DEMO_PRICES,
        "rate_limit_default": "100000/minute",
        "guards_policy_file": policy,
        "db_timeout_seconds": 30.0,
    }
    values.update(overrides)
    return make_settings(tmp_path, backend, pg_url, **values)


@pytest.fixture
async def settings(tmp_path: Path, backend: str, pg_url: str | None) -> Settings:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    return usage_settings(tmp_path, backend, pg_url)


async def api_key(app: FastAPI, account: Account) -> tuple[str, dict[str, str]]:
    key, secret = await app.state.identity.create_key(account.id, "test", ["chat", "read"])
    return key.id, {"Authorization": f"Bearer {secret}"}


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": DEMO, "messages": [{"role": "user", "content": content}], **extra}


async def ledger(app: FastAPI) -> list[UsageRecord]:
    """Every ledger row, oldest first, after writing what is queued."""
    usage: UsageService = app.state.usage
    await usage.ledger.flush()
    async with usage.db.session() as session:
        return list((await session.scalars(select(UsageRecord).order_by(UsageRecord.id))).all())


async def held(app: FastAPI) -> int:
    """Nano-dollars reserved across every budget counter."""
    usage: UsageService = app.state.usage
    async with usage.db.session() as session:
        total = await session.scalar(select(func.coalesce(func.sum(BudgetCounter.reserved_nanos), 0)))
    return int(total or 0)
