"""Server-sent events at /api/v1/events: the same topics and the same filtering as the WebSocket."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi import FastAPI

from tests.conftest import Account, make_account
from tests.realtime.conftest import GUARD_SECONDS, Live, events_until, open_socket, trace_is


@dataclass
class Sse:
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


async def next_sse(lines: AsyncIterator[str]) -> Sse:
    """The next event of the stream (comment lines before it are kept in ``comments``)."""
    found = Sse()
    async for line in lines:
        if line.startswith(":"):
            found.comments.append(line[1:].strip())
        elif line.startswith("event:"):
            found.event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            found.data = json.loads(line.split(":", 1)[1])
        elif line == "" and found.event is not None:
            return found
    raise AssertionError("the stream ended")


async def test_sse_delivers_the_members_own_events_only(app: FastAPI, live: Live, admin: Account) -> None:
    first, second = await make_account(app), await make_account(app)
    observer = await open_socket(live, headers=admin.headers, topics=["request.completed"])
    first_trace, second_trace = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
    async with (
        live.http() as http,
        http.stream(
            "GET", "/api/v1/events", params={"topics": "request.completed"}, headers=first.headers
        ) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        ready = await next_sse(lines)
        assert (ready.event, ready.data["user_id"], ready.data["subscribed"]) == (
            "ready",
            first.id,
            ["request.completed"],
        )
        await http.get("/api/v1/auth/me", headers={**second.headers, "X-Request-ID": second_trace})
        await events_until(observer, trace_is(second_trace))  # delivered everywhere it may go by now
        await http.get("/api/v1/auth/me", headers={**first.headers, "X-Request-ID": first_trace})
        got = await next_sse(lines)
        assert got.event == "request.completed"
        assert (got.data["trace_id"], got.data["user_id"], got.data["path"]) == (
            first_trace,
            first.id,
            "/api/v1/auth/me",
        )


async def test_sse_needs_a_credential_and_known_topics(live: Live, member: Account) -> None:
    async with live.http() as http:
        anonymous = await http.get("/api/v1/events")
        assert (anonymous.status_code, anonymous.json()["error"]["code"]) == (401, "G0_auth_not_configured")
        unknown = await http.get(
            "/api/v1/events", params={"topics": "request.completed,nope"}, headers=member.headers
        )
        assert unknown.status_code == 422
        assert unknown.json()["error"]["details"][0]["field"] == "query.topics"


async def test_a_quiet_stream_gets_keepalive_comments(
    live: Live, member: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI's own SSE keepalive (every 15 s); made short here. FastAPI documents the name for this use.
    monkeypatch.setattr("fastapi.routing._PING_INTERVAL", 0.1)
    async with live.http() as http, http.stream("GET", "/api/v1/events", headers=member.headers) as stream:
        lines = stream.aiter_lines()
        assert (await next_sse(lines)).event == "ready"
        async for line in lines:
            if line.startswith(":"):
                assert line == ": ping"
                break


async def test_a_revoked_key_ends_the_stream(live: Live, member: Account) -> None:
    async with live.http() as http:
        created = await http.post(
            "/api/v1/keys", headers=member.headers, json={"name": "s", "scopes": ["read"]}
        )
        key = created.json()["data"]
        async with http.stream(
            "GET",
            "/api/v1/events",
            params={"topics": "conversation.message"},  # none come: the next event can only be the close
            headers={"X-API-Key": key["key"]},
            timeout=GUARD_SECONDS,
        ) as stream:
            lines = stream.aiter_lines()
            assert (await next_sse(lines)).event == "ready"
            assert (await http.delete(f"/api/v1/keys/{key['id']}", headers=member.headers)).status_code == 200
            closed = await next_sse(lines)
            assert (closed.event, closed.data) == ("close", {"code": 1008, "reason": "G1_auth_revoked"})
            assert [line async for line in lines if line] == []  # and the stream ends there
