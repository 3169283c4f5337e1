"""``POST /api/v1/chat``: a conversation turn through the gateway pipeline (fake OpenAI-protocol upstream),
answered in the envelope or over SSE; memory within the model's context window with the saved tokens in
usage and a background summary; drift warnings and ``guard.drift``; privacy; guard blocks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from aiguardian.app import create_app
from aiguardian.conversations.models import Conversation
from aiguardian.core.bus import EventBus
from aiguardian.usage import tokens
from tests.conftest import async_pg_url, make_account, make_settings, truncate_all
from tests.fakes.openai_upstream import OpenAIUpstream
from tests.realtime.conftest import next_message, open_socket, serving
from tests.usage.conftest import ledger

MODEL = "gpt-fake"
WINDOW = 400
# The guards of these tests: loaded from the repository's own modules, independent of the shipped default.
POLICY = """
policies:
  default:
    input:
      - messages
      - guard: secrets
        action: block
      - guard: pii
        action: redact
    output:
      - guard: secrets
        action: block
"""


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream(models=(MODEL,)) as fake:
        yield fake


@asynccontextmanager
async def chat_app(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream, policy_text: str = POLICY
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    spec = {
        "id": "fake",
        "model": MODEL,
        "provider": "openai",
        "base_url": upstream.base_url,
        "upstream_model": MODEL,
        "timeout": 5.0,
        "context_window": WINDOW,
    }
    policy = tmp_path / "guards.yaml"
    policy.write_text(policy_text, encoding="utf-8")
    settings = make_settings(
        tmp_path, backend, pg_url, deployments=[spec], gateway_max_retries=0, guards_policy_file=policy
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 50001))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http


async def _chat(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/chat", headers=headers, json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_chat_creates_then_continues_a_conversation_through_the_gateway(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, client):
        member = await make_account(app)
        first = await _chat(
            client, member.headers, message="Plan a trip to Lyon", system_prompt="You plan trips."
        )
        assert first["message"]["content"] == "fake reply to: Plan a trip to Lyon"
        assert first["message"]["role"] == "assistant"
        assert first["usage"]["prompt_tokens"] > 0
        second = await _chat(
            client, member.headers, message="Which train?", conversation_id=first["conversation_id"]
        )
        assert second["conversation_id"] == first["conversation_id"]
        sent = upstream.last.body["messages"]
        assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
        assert sent[-1]["content"] == "Which train?"
        stored = await client.get(f"/api/v1/conversations/{first['conversation_id']}", headers=member.headers)
        contents = [m["content"] for m in stored.json()["data"]["messages"]["items"]]
        assert contents == [
            "Plan a trip to Lyon",
            "fake reply to: Plan a trip to Lyon",
            "Which train?",
            "fake reply to: Which train?",
        ]
        rows = [r for r in await ledger(app) if r.status == "ok"]
        assert len(rows) == 2
        assert all(r.user_id == member.id and r.model == MODEL for r in rows)


async def test_chat_streams_deltas_then_a_done_event_with_the_stored_message(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, client):
        member = await make_account(app)
        response = await client.post(
            "/api/v1/chat",
            headers=member.headers,
            json={"model": MODEL, "message": "Hello there", "stream": True},
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [f for f in response.text.split("\n\n") if f]
        kinds = [f.split("\n")[0].removeprefix("event: ") for f in frames]
        datas = [orjson.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
        assert kinds[-1] == "done"
        assert set(kinds[:-1]) == {"delta"}
        assert len(kinds) > 2
        streamed = "".join(d["content"] for d in datas[:-1])
        # The upstream's own stream, passed on (the fake streams word by word, each with a space after it).
        assert streamed.strip() == "fake reply to: Hello there"
        done = datas[-1]
        assert done["message"]["content"] == streamed  # what was stored is what was streamed
        (call,) = upstream.calls()
        assert call.body is not None
        assert call.body.get("stream") is True
        got = await client.get(f"/api/v1/conversations/{done['conversation_id']}", headers=member.headers)
        assert got.json()["data"]["messages"]["items"][-1]["id"] == done["message"]["id"]


async def test_forty_turns_stay_within_the_context_window_and_the_saved_tokens_are_in_usage(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, client):
        member = await make_account(app)
        conversation_id = None
        saved = 0
        for turn in range(40):
            body: dict[str, Any] = {
                "message": f"Turn {turn}: tell me more about the history of Lyon silk weaving"
            }
            if conversation_id:
                body["conversation_id"] = conversation_id
            else:
                body["system_prompt"] = "You are a guide to the history of Lyon."
            data = await _chat(client, member.headers, **body)
            conversation_id = data["conversation_id"]
            saved += data["usage"]["saved_tokens"]
        assert saved > 0
        for call in upstream.calls(model=MODEL):
            assert tokens.count_messages(call.body["messages"]) <= WINDOW
        await ledger(app)  # the ledger is written in batches
        summary = (await client.get("/api/v1/usage", headers=member.headers)).json()["data"]
        assert summary["totals"]["saved_tokens"] >= saved
        # The trimmed turns got a summary from the model, in the background.
        for _ in range(500):
            async with app.state.runtime.db.session() as session:
                conversation = await session.get(Conversation, conversation_id)
            if conversation is not None and conversation.summary:
                break
            await asyncio.sleep(0.02)
        assert conversation is not None
        assert conversation.summary
        assert conversation.summary.startswith("fake reply to: ")


async def test_a_turn_off_the_conversations_purpose_gets_the_drift_warning_and_event(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, client):
        member = await make_account(app)
        bus: EventBus = app.state.runtime.bus
        drifts: list[dict[str, Any]] = []

        async def seen(_topic: str, payload: dict[str, Any]) -> None:
            drifts.append(payload)

        bus.on("guard.drift", seen)
        system = "You help the user cook Italian food: recipes, ingredients, oven temperatures and pasta."
        turns = [
            "How long should I boil fresh pasta for a lasagna recipe?",
            "Which cheese goes into the lasagna besides mozzarella?",
            "What oven temperature do I bake the lasagna at?",
            "Explain how to configure BGP routing between two autonomous systems on my network switches.",
        ]
        results = []
        conversation_id = None
        for text in turns:
            body: dict[str, Any] = {"message": text}
            body.update(
                {"conversation_id": conversation_id} if conversation_id else {"system_prompt": system}
            )
            data = await _chat(client, member.headers, **body)
            conversation_id = data["conversation_id"]
            results.append(data)
        assert all("drift:CONTEXT_DRIFT" not in r["warnings"] for r in results[:3])
        assert "drift:CONTEXT_DRIFT" in results[3]["warnings"]
        for _ in range(200):
            if drifts:
                break
            await asyncio.sleep(0.01)
        assert [d["conversation_id"] for d in drifts] == [conversation_id]
        assert 0 < drifts[0]["threshold"] <= drifts[0]["score"]
        assert drifts[0]["user_id"] == member.id
        assert drifts[0]["action"] == "warn"


async def test_a_member_cannot_continue_another_members_conversation(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, client):
        owner, other = await make_account(app), await make_account(app)
        data = await _chat(client, owner.headers, message="Secret plans")
        response = await client.post(
            "/api/v1/chat",
            headers=other.headers,
            json={"message": "Let me in", "conversation_id": data["conversation_id"]},
        )
        assert (response.status_code, response.json()["error"]["code"]) == (404, "E2_not_found")
        assert len(upstream.calls()) == 1


async def test_a_blocked_turn_answers_the_reason_code_and_stores_nothing(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, client):
        member = await make_account(app)
        data = await _chat(client, member.headers, message="Hello")
        leaked = "Use my key AKIAIOSFODNN7EXAMPLE with secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        response = await client.post(
            "/api/v1/chat",
            headers=member.headers,
            json={"message": leaked, "conversation_id": data["conversation_id"]},
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["reason_codes"]
        assert error["code"] == error["reason_codes"][0]
        assert len(upstream.calls()) == 1
        got = await client.get(f"/api/v1/conversations/{data['conversation_id']}", headers=member.headers)
        assert [m["content"] for m in got.json()["data"]["messages"]["items"]] == [
            "Hello",
            "fake reply to: Hello",
        ]


async def test_chat_over_the_websocket_streams_deltas_then_done(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream) as (app, _client), serving(app) as live:
        member = await make_account(app)
        ws = await open_socket(live, headers=member.headers)
        await ws.send(
            json.dumps({"type": "chat", "id": 3, "model": MODEL, "message": "Hello over the socket"})
        )
        frames = []
        while not frames or frames[-1]["type"] not in ("chat.done", "error"):
            frames.append(await next_message(ws))
        assert {f["type"] for f in frames[:-1]} == {"chat.delta"}
        assert len(frames) > 2
        assert all(f["id"] == 3 for f in frames)
        streamed = "".join(f["content"] for f in frames[:-1])
        assert streamed.strip() == "fake reply to: Hello over the socket"
        done = frames[-1]["data"]
        assert done["message"]["content"] == streamed  # what was stored is what was streamed

        leaked = "my key AKIAIOSFODNN7EXAMPLE and secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        body = {"type": "chat", "id": 4, "message": leaked, "conversation_id": done["conversation_id"]}
        await ws.send(json.dumps(body))
        refused = await next_message(ws)
        assert refused["type"] == "error"
        assert refused["id"] == 4
        assert refused["code"] == refused["reason_codes"][0]
        await ws.close()


STREAM_GUARD_POLICY = """
policies:
  default:
    input: [messages]
    output: []
    stream:
      - {guard: "tests.fakes.guards:KeywordGuard", words: ["top secret"], code: LEAK}
    stream_every: 8
    stream_window: 100
"""


async def test_a_stream_a_guard_stops_midway_ends_with_an_error_and_stores_nothing(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    async with chat_app(tmp_path, backend, pg_url, upstream, STREAM_GUARD_POLICY) as (app, client):
        member = await make_account(app)
        response = await client.post(
            "/api/v1/chat",
            headers=member.headers,
            json={"model": MODEL, "message": "tell me the top secret plan in many words", "stream": True},
        )
        frames = [f for f in response.text.split("\n\n") if f]
        kinds = [f.split("\n")[0].removeprefix("event: ") for f in frames]
        datas = [orjson.loads(f.split("\n")[1].removeprefix("data: ")) for f in frames]
        assert kinds[0] == "delta"  # it was streaming when the guard stopped it
        assert kinds[-1] == "error"
        assert "done" not in kinds
        assert datas[-1]["code"] == "LEAK"
        passed = "".join(d["content"] for d in datas[:-1])
        assert "top secret plan" not in passed
        conversation_id = datas[0]["conversation_id"]
        stored = await client.get(f"/api/v1/conversations/{conversation_id}", headers=member.headers)
        assert stored.json()["data"]["messages"]["items"] == []  # a stopped turn leaves nothing stored
        await app.state.usage.ledger.flush()
        (row,) = await ledger(app)
        assert row.status == "blocked"
        assert row.completion_tokens > 0  # the streamed tokens are paid for


async def test_the_policys_history_tokens_caps_the_history_and_the_saved_tokens_are_counted(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream
) -> None:
    capped = POLICY.replace("  default:\n", "  default:\n    history_tokens: 60\n")
    async with chat_app(tmp_path, backend, pg_url, upstream, capped) as (app, client):
        member = await make_account(app)
        conversation_id, saved = None, 0
        for n in range(6):
            turn = await _chat(
                client,
                member.headers,
                message=f"Question number {n}: tell me something about the number {n} please",
                **({"conversation_id": conversation_id} if conversation_id else {}),
            )
            conversation_id = turn["conversation_id"]
            assert turn["usage"]["history_budget"] == 60
            assert turn["usage"]["history_tokens"] <= 60  # the window (400) alone would allow far more
            saved += turn["usage"]["saved_tokens"]
        assert saved > 0
        await app.state.usage.ledger.flush()
        assert sum(r.saved_tokens for r in await ledger(app)) == saved
