"""A budget reservation whose process died between reserve and settle does not hold the budget for ever:
it expires, and a sweep (periodic, or on a refused request) gives its amount back, exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import func, select

from aiguardian.app import create_app
from aiguardian.core.clock import utc_now
from aiguardian.settings import Settings
from aiguardian.usage.models import BudgetCounter, BudgetReservation
from aiguardian.usage.prices import to_nanos
from aiguardian.usage.schemas import BudgetCreate
from aiguardian.usage.service import Call, UsageService
from tests.conftest import make_account
from tests.usage.conftest import ANSWER_COST, ANSWER_TOKENS, DEMO, api_key, chat, held

ONE_ANSWER = chat(max_tokens=ANSWER_TOKENS)  # its reservation is exactly one answer's cost


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50003))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


async def budget_for_one_answer(usage: UsageService) -> None:
    await usage.create_budget(BudgetCreate(scope="global", period="total", limit_usd=ANSWER_COST), None)


async def admit_one(usage: UsageService) -> Call:
    """What a request does before its upstream call: the reservation a crash would leave behind."""
    return await usage.admit(
        trace_id=f"crashed-{uuid.uuid4().hex[:8]}",
        user_id=None,
        key_id=None,
        model=DEMO,
        stream=False,
        prompt_tokens=0,
        max_completion=ANSWER_TOKENS,
        candidates=[("demo", DEMO)],
    )


async def counter(usage: UsageService) -> tuple[int, int, int, int]:
    """(spent nanos, reserved nanos, reserved tokens, reservation rows) over every budget."""
    async with usage.db.session() as session:
        spent, reserved, tokens = (
            await session.execute(
                select(
                    func.coalesce(func.sum(BudgetCounter.spent_nanos), 0),
                    func.coalesce(func.sum(BudgetCounter.reserved_nanos), 0),
                    func.coalesce(func.sum(BudgetCounter.reserved_tokens), 0),
                )
            )
        ).one()
        rows = await session.scalar(select(func.count()).select_from(BudgetReservation))
    return int(spent), int(reserved), int(tokens), int(rows or 0)


async def test_a_reservation_left_by_a_dead_process_is_released_once_it_expires(settings: Settings) -> None:
    async with serving(settings) as (app, _):
        usage: UsageService = app.state.usage
        await budget_for_one_answer(usage)
        await admit_one(usage)  # ... and the process dies before it settles
    assert settings.budget_reservation_ttl_seconds == 900

    async with serving(settings) as (app, client):  # the next process, on the same database
        usage = app.state.usage
        assert await counter(usage) == (0, to_nanos(ANSWER_COST), ANSWER_TOKENS, 1)
        _, headers = await api_key(app, await make_account(app))
        refused = await client.post("/v1/chat/completions", json=ONE_ANSWER, headers=headers)
        assert refused.status_code == 429, "the reservation has not expired yet, so it still holds the room"

        later = utc_now() + timedelta(seconds=settings.budget_reservation_ttl_seconds + 1)
        assert await usage.release_expired(later) == 1
        assert await counter(usage) == (0, 0, 0, 0)
        assert await usage.release_expired(later) == 0, "released once"

        served = await client.post("/v1/chat/completions", json=ONE_ANSWER, headers=headers)
        assert served.status_code == 200, served.text
        assert await counter(usage) == (to_nanos(ANSWER_COST), 0, 0, 0)


async def test_a_request_refused_by_a_hard_budget_first_releases_expired_reservations(
    settings: Settings,
) -> None:
    short = settings.model_copy(
        update={"budget_reservation_ttl_seconds": 0.05, "budget_reservation_sweep_seconds": 3600}
    )
    async with serving(short) as (app, client):
        usage: UsageService = app.state.usage
        await budget_for_one_answer(usage)
        await admit_one(usage)  # never settled
        _, headers = await api_key(app, await make_account(app))
        await asyncio.sleep(0.1)  # past the reservation's expiry; the periodic sweep is an hour away
        assert await counter(usage) == (0, to_nanos(ANSWER_COST), ANSWER_TOKENS, 1)
        served = await client.post("/v1/chat/completions", json=ONE_ANSWER, headers=headers)
        assert served.status_code == 200, served.text
        assert await counter(usage) == (to_nanos(ANSWER_COST), 0, 0, 0)


async def test_the_periodic_sweep_releases_expired_reservations_without_any_request(
    settings: Settings,
) -> None:
    short = settings.model_copy(
        update={"budget_reservation_ttl_seconds": 0.05, "budget_reservation_sweep_seconds": 0.05}
    )
    async with serving(short) as (app, _):
        usage: UsageService = app.state.usage
        await budget_for_one_answer(usage)
        await admit_one(usage)
        for _ in range(200):  # bounded wait for the background task; how long it takes is not the point
            if await held(app) == 0:
                break
            await asyncio.sleep(0.05)
        assert await counter(usage) == (0, 0, 0, 0)


async def test_a_call_settled_after_its_reservation_expired_counts_its_cost_and_releases_nothing_twice(
    settings: Settings,
) -> None:
    async with serving(settings) as (app, _):
        usage: UsageService = app.state.usage
        await budget_for_one_answer(usage)
        slow = await admit_one(usage)  # a call that outlives its reservation (a very long stream)
        later = utc_now() + timedelta(seconds=settings.budget_reservation_ttl_seconds + 1)
        assert await usage.release_expired(later) == 1
        answer: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": ANSWER_TOKENS}
        await usage.finish(slow, status="ok", usage=answer, provider="demo", upstream_model=DEMO)
        assert slow.cost == ANSWER_COST
        assert await counter(usage) == (to_nanos(ANSWER_COST), 0, 0, 0)
