"""Ledger rows the database would not take by shutdown are spooled to the data dir and written on the next
start, so a request served while the database was down is still metered."""

from __future__ import annotations

from decimal import Decimal

import httpx
from asgi_lifespan import LifespanManager

from aiguardian.app import create_app
from aiguardian.core.db import Database
from aiguardian.settings import Settings
from aiguardian.usage.service import UsageService
from tests.conftest import make_account
from tests.usage.conftest import ANSWER_COST, api_key, chat, ledger


def take_database_down(db: Database) -> None:
    """The database's breaker open, as after failed connections: every query fails at once."""
    db.breaker.reset_seconds = 3600
    for _ in range(db.breaker.threshold):
        db.breaker.record_failure("simulated outage")


async def test_a_request_served_while_the_database_is_down_is_metered_after_the_restart(
    settings: Settings,
) -> None:
    spool = settings.data_dir / "usage-spool.jsonl"
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50004))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            member = await make_account(app)
            key_id, headers = await api_key(app, member)
            first = await client.post("/v1/chat/completions", json=chat("first"), headers=headers)
            assert first.status_code == 200, first.text
            assert len(await ledger(app)) == 1

            usage: UsageService = app.state.usage
            # Nothing may be in flight: a query that began before the outage and ends after it would
            # close the breaker again (the database answered it).
            await app.state.audit_writer.flush()
            take_database_down(usage.db)
            # The key and the (absent) budgets are cached in memory: the request needs no database.
            during = await client.post("/v1/chat/completions", json=chat("during"), headers=headers)
            assert during.status_code == 200, during.text
            assert usage.ledger.depth == 1

        # Shut down with the database still down; a short deadline instead of the default ten seconds.
        await usage.ledger.close(deadline_seconds=0.2)
        await app.state.audit_writer.close(deadline_seconds=0.2)
        assert len(spool.read_text().splitlines()) == 1

    restarted = create_app(settings)
    async with LifespanManager(restarted, startup_timeout=30, shutdown_timeout=30):
        rows = await ledger(restarted)
    assert not spool.exists()
    assert [r.trace_id for r in rows] == [first.headers["x-request-id"], during.headers["x-request-id"]]
    spooled = rows[1]
    assert (spooled.status, spooled.key_id, spooled.user_id) == ("ok", key_id, member.id)
    assert spooled.cost == ANSWER_COST == Decimal(during.headers["x-aig-cost"])
    assert spooled.created_at is not None
