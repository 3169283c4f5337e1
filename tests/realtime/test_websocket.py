"""The WebSocket at /api/v1/ws (and /ws), with a real client against a real server: authentication, what
each subscriber may see, subscriptions, keepalive, revocation and slow consumers."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from fastapi import FastAPI
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aiguardian.core import events
from aiguardian.realtime.hub import SLOW_CONSUMER, Hub
from tests.conftest import Account, make_account, make_settings
from tests.realtime.conftest import (
    Live,
    bearer,
    close_of,
    events_until,
    next_message,
    open_socket,
    running,
    trace_is,
)


async def _request(live: Live, account: Account, trace_id: str) -> None:
    """A real request by ``account``: its `request.completed` event carries ``trace_id``."""
    async with live.http() as http:
        response = await http.get("/api/v1/auth/me", headers={**account.headers, "X-Request-ID": trace_id})
    assert response.status_code == 200, response.text


def _trace() -> str:
    return f"t-{uuid.uuid4().hex}"


# -- authentication ---------------------------------------------------------------------------------------------


async def test_a_socket_without_credential_is_closed_with_policy_violation(live: Live) -> None:
    ws = await connect(live.ws_url + "/api/v1/ws", proxy=None)
    # Nothing sent within AIG_REALTIME_AUTH_TIMEOUT_SECONDS.
    assert await close_of(ws) == (1008, "G0_auth_not_configured")


async def test_a_first_message_other_than_auth_is_closed_with_policy_violation(live: Live) -> None:
    ws = await connect(live.ws_url + "/api/v1/ws", proxy=None)
    await ws.send(json.dumps({"type": "subscribe", "topics": ["*"]}))
    assert await close_of(ws) == (1008, "G0_auth_not_configured")


@pytest.mark.parametrize("how", ["header", "first_message"])
async def test_a_bad_token_is_closed_with_policy_violation(live: Live, how: str) -> None:
    if how == "header":
        ws = await connect(
            live.ws_url + "/api/v1/ws", additional_headers={"Authorization": "Bearer nope"}, proxy=None
        )
    else:
        ws = await connect(live.ws_url + "/api/v1/ws", proxy=None)
        await ws.send(json.dumps({"type": "auth", "token": "aig_not-a-real-key"}))
    assert await close_of(ws) == (1008, "G1_auth_invalid")


async def test_a_key_without_the_read_scope_is_closed(live: Live, member: Account) -> None:
    async with live.http() as http:
        created = await http.post(
            "/api/v1/keys", headers=member.headers, json={"name": "w", "scopes": ["write"]}
        )
    assert created.status_code == 201, created.text
    ws = await connect(
        live.ws_url + "/ws", additional_headers={"X-API-Key": created.json()["data"]["key"]}, proxy=None
    )
    assert await close_of(ws) == (1008, "G2_scope_missing")


async def test_token_in_the_first_message_or_a_header_and_both_paths(live: Live, member: Account) -> None:
    for path in ("/api/v1/ws", "/ws"):
        by_message = await open_socket(live, token=bearer(member.headers), path=path)
        by_header = await open_socket(live, headers=member.headers, path=path)
        for ws in (by_message, by_header):
            await ws.send(json.dumps({"type": "ping", "id": 7}))
            assert await next_message(ws) == {"type": "pong", "id": 7}
            await ws.close()


async def test_a_revoked_key_loses_its_socket(live: Live, member: Account) -> None:
    async with live.http() as http:
        created = await http.post(
            "/api/v1/keys", headers=member.headers, json={"name": "r", "scopes": ["read"]}
        )
        key = created.json()["data"]
        ws = await open_socket(live, headers={"X-API-Key": key["key"]})
        revoked = await http.delete(f"/api/v1/keys/{key['id']}", headers=member.headers)
        assert revoked.status_code == 200, revoked.text
    assert await close_of(ws) == (1008, "G1_auth_revoked")


# -- who sees what ----------------------------------------------------------------------------------------------


async def test_a_member_never_receives_another_users_events_and_an_admin_sees_all(
    app: FastAPI, live: Live, admin: Account
) -> None:
    first = await make_account(app)
    second = await make_account(app)
    first_ws = await open_socket(live, headers=first.headers, topics=["*"])
    second_ws = await open_socket(live, headers=second.headers, topics=["*"])
    admin_ws = await open_socket(live, headers=admin.headers, topics=["*"])

    second_trace, first_trace = _trace(), _trace()
    await _request(live, second, second_trace)
    # The admin has it: the hub has handed it to every subscriber that may see it, so it is queued for the
    # first member before anything published later.
    seen_by_admin = await events_until(admin_ws, trace_is(second_trace))
    await _request(live, first, first_trace)
    seen_by_admin += await events_until(admin_ws, trace_is(first_trace))

    seen_by_first = await events_until(first_ws, trace_is(first_trace))
    assert {m["data"]["user_id"] for m in seen_by_first} == {first.id}
    assert not any(m["data"].get("trace_id") == second_trace for m in seen_by_first)
    seen_by_second = await events_until(second_ws, trace_is(second_trace))
    assert {m["data"]["user_id"] for m in seen_by_second} == {second.id}

    traces = {m["data"].get("trace_id"): m["data"]["user_id"] for m in seen_by_admin}
    assert traces[second_trace] == second.id
    assert traces[first_trace] == first.id
    for ws in (first_ws, second_ws, admin_ws):
        await ws.close()


async def test_an_admin_key_without_the_admin_scope_sees_only_its_own(
    app: FastAPI, live: Live, admin: Account, member: Account
) -> None:
    async with live.http() as http:
        created = await http.post(
            "/api/v1/keys", headers=admin.headers, json={"name": "ro", "scopes": ["read"]}
        )
    limited = await open_socket(live, headers={"X-API-Key": created.json()["data"]["key"]}, topics=["*"])
    observer = await open_socket(live, headers=admin.headers, topics=["request.completed"])
    member_trace, own_trace = _trace(), _trace()
    await _request(live, member, member_trace)
    await events_until(observer, trace_is(member_trace))
    await _request(live, admin, own_trace)
    seen = await events_until(limited, trace_is(own_trace))
    assert {m["data"]["user_id"] for m in seen} == {admin.id}


async def test_audit_batches_reach_admins(live: Live, admin: Account, member: Account) -> None:
    admin_ws = await open_socket(live, headers=admin.headers, topics=["audit.appended"])
    await _request(live, member, _trace())
    appended = await next_message(admin_ws)
    assert appended["topic"] == "audit.appended"
    data = appended["data"]
    assert data["user_id"] is None
    assert data["count"] >= 1
    assert len(data["head_hash"]) == 64


# -- subscriptions ----------------------------------------------------------------------------------------------


async def test_subscribe_and_unsubscribe_choose_the_topics(app: FastAPI, live: Live, admin: Account) -> None:
    member = await make_account(app)
    bus = app.state.runtime.bus
    ws = await open_socket(live, headers=member.headers, topics=["usage.updated"])
    observer = await open_socket(live, headers=admin.headers, topics=["*"])

    skipped = _trace()
    await _request(live, member, skipped)  # request.completed: not asked for
    await events_until(observer, trace_is(skipped))
    await events.publish(bus, _usage(member.id, "first"))
    got = await next_message(ws)
    assert (got["topic"], got["data"]["trace_id"]) == ("usage.updated", "first")

    await ws.send(json.dumps({"type": "unsubscribe", "topics": ["usage.updated"], "id": 1}))
    assert await next_message(ws) == {"type": "unsubscribed", "id": 1, "topics": []}
    await ws.send(json.dumps({"type": "subscribe", "topics": ["request.*"], "id": 2}))
    assert await next_message(ws) == {"type": "subscribed", "id": 2, "topics": ["request.*"]}
    await events.publish(bus, _usage(member.id, "second"))  # no longer asked for
    await events_until(
        observer, lambda m: m["topic"] == "usage.updated" and m["data"]["trace_id"] == "second"
    )
    wanted = _trace()
    await _request(live, member, wanted)
    got = await next_message(ws)
    assert (got["topic"], got["data"]["trace_id"]) == ("request.completed", wanted)


async def test_an_unknown_topic_or_message_is_an_error_answer_not_a_close(
    live: Live, member: Account
) -> None:
    ws = await open_socket(live, headers=member.headers)
    await ws.send(json.dumps({"type": "subscribe", "topics": ["nope.*"], "id": "x"}))
    answer = await next_message(ws)
    assert (answer["type"], answer["id"], answer["code"]) == ("error", "x", "E1_validation_error")
    assert "nope.*" in answer["message"]
    await ws.send("not json")
    assert (await next_message(ws))["code"] == "E1_validation_error"
    await ws.send(json.dumps({"type": "dance"}))
    assert (await next_message(ws))["code"] == "E1_validation_error"
    await ws.send(json.dumps({"type": "ping"}))
    assert await next_message(ws) == {"type": "pong", "id": None}


async def test_a_binary_frame_closes_the_socket(live: Live, member: Account) -> None:
    ws = await open_socket(live, headers=member.headers)
    await ws.send(b"\x00\x01")
    assert await close_of(ws) == (1003, "send JSON text frames")


# -- keepalive and slow consumers -------------------------------------------------------------------------------


async def test_the_server_pings_a_quiet_socket(tmp_path: Path, backend: str, pg_url: str | None) -> None:
    async with running(make_settings(tmp_path, backend, pg_url, realtime_ping_seconds=0.2)) as live:
        member = await make_account(live.app)
        ws = await open_socket(live, headers=member.headers)
        assert json.loads(await ws.recv()) == {"type": "ping"}
        await ws.send(json.dumps({"type": "pong"}))
        assert json.loads(await ws.recv()) == {"type": "ping"}  # still open, still pinging
        await ws.close()


async def test_a_slow_consumer_is_disconnected_and_a_fast_one_is_not(
    tmp_path: Path, backend: str, pg_url: str | None
) -> None:
    async with running(make_settings(tmp_path, backend, pg_url, realtime_send_queue=8)) as live:
        member = await make_account(live.app)
        hub: Hub = live.app.state.hub
        bus = live.app.state.runtime.bus
        # No compression: the padding must fill the socket buffers as it is.
        fast = await connect(
            live.ws_url + "/api/v1/ws", additional_headers=member.headers, compression=None, proxy=None
        )
        slow = await connect(
            live.ws_url + "/api/v1/ws", additional_headers=member.headers, compression=None, proxy=None
        )
        for ws in (fast, slow):
            assert (await next_message(ws))["type"] == "ready"
            await ws.send(json.dumps({"type": "subscribe", "topics": ["usage.updated"]}))
            assert (await next_message(ws))["type"] == "subscribed"

        padding = os.urandom(16_384).hex()
        published = 0
        while not any(s.close_code == SLOW_CONSUMER for s in hub.subscribers):
            assert published < 5000, "the slow consumer was never disconnected"
            await bus.publish("usage.updated", {"user_id": member.id, "n": published, "padding": padding})
            got = await next_message(fast)  # the fast one reads each event as it comes
            assert got["data"]["n"] == published
            published += 1

        received = []
        try:
            while True:
                received.append(json.loads(await slow.recv())["data"]["n"])
        except ConnectionClosed:
            pass
        assert slow.close_code == SLOW_CONSUMER
        assert slow.close_reason == "slow consumer"
        # What it did get came in order, without gaps, and it was cut off before the end.
        assert received == list(range(len(received)))
        assert len(received) < published

        await bus.publish("usage.updated", {"user_id": member.id, "n": published, "padding": ""})
        assert (await next_message(fast))["data"]["n"] == published
        assert hub.slow_consumers == 1
        await fast.close()


def _usage(user_id: str, trace_id: str) -> events.UsageUpdated:
    return events.UsageUpdated(
        user_id=user_id,
        trace_id=trace_id,
        model="m",
        prompt_tokens=1,
        completion_tokens=1,
        cost_usd="0",
    )
