"""ContextGuard's memory: the history sent with a turn fits the context window and the token budget, keeps
the newest turns verbatim, uses the stored summary for older ones, and reports the tokens it saved."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from aiguardian.conversations import service
from aiguardian.conversations.memory import SUMMARY_PREFIX, History, Turn, build_history
from aiguardian.conversations.schemas import ConversationCreate
from aiguardian.conversations.service import Answer, Viewer
from aiguardian.core.errors import ReasonCode
from aiguardian.identity.service import Principal
from aiguardian.usage import tokens
from aiguardian.usage.service import ContextExceeded
from tests.conftest import Account

WINDOW = 600
RESERVE = 100
SYSTEM = "You are a careful travel assistant. Answer in two sentences at most."


def _text(n: int, role: str) -> str:
    # About 40 tokens, different each turn.
    return f"Turn {n} from the {role}: " + " ".join(f"word{n}x{k}" for k in range(12))


def _check(history: History, limit: int, newest: str) -> None:
    assert history.tokens <= limit
    assert history.tokens == tokens.count_messages(history.messages)  # counted as usage counts a prompt
    assert history.messages[-1] == {"role": "user", "content": newest}
    assert history.saved_tokens == history.full_tokens - history.tokens


async def test_a_40_turn_conversation_never_exceeds_the_window(app: FastAPI, member: Account) -> None:
    db, bus = app.state.runtime.db, app.state.runtime.bus
    conversation = await service.create_conversation(
        db, Viewer(member.id), ConversationCreate(model="m", system_prompt=SYSTEM)
    )
    limit = WINDOW - RESERVE
    trimmed_at = None
    for n in range(40):
        question = _text(n, "user")
        new = Turn(service.NEW_TURN_ID, "user", question, await service.message_tokens("user", question))
        history = await service.history_for(db, conversation.id, new, window=WINDOW, reserve=RESERVE)
        _check(history, limit, question)
        assert history.messages[0] == {"role": "system", "content": SYSTEM}
        if history.dropped and trimmed_at is None:
            trimmed_at = n
        if trimmed_at is not None:
            assert history.dropped > 0
            assert history.saved_tokens > 0
            # The turns kept are the newest, in order, ending with the last answer.
            kept = [m["content"] for m in history.messages[1:-1]]
            assert kept[-1] == _text(n - 1, "assistant")
        else:
            assert history.saved_tokens == 0
            assert len(history.messages) == 2 + 2 * n
        await service.add_messages(
            db, bus, conversation.id, [("user", question, None), ("assistant", _text(n, "assistant"), None)]
        )
    assert trimmed_at is not None
    assert trimmed_at < 10
    assert history.full_tokens > 5 * WINDOW  # forty turns are far over the window; what was sent never was


async def test_the_stored_summary_stands_in_for_the_turns_it_covers(app: FastAPI, member: Account) -> None:
    db, bus = app.state.runtime.db, app.state.runtime.bus
    conversation = await service.create_conversation(
        db, Viewer(member.id), ConversationCreate(model="m", system_prompt=SYSTEM)
    )
    stored = []
    for n in range(12):
        stored += await service.add_messages(
            db,
            bus,
            conversation.id,
            [("user", _text(n, "user"), None), ("assistant", _text(n, "assistant"), None)],
        )
    summary = "The user plans a week in Lyon by train and wants vegetarian restaurants."
    await service.set_summary(db, conversation.id, summary, upto=stored[15].id)

    question = "And on Sunday?"
    new = Turn(service.NEW_TURN_ID, "user", question, await service.message_tokens("user", question))
    history = await service.history_for(db, conversation.id, new, window=WINDOW, reserve=RESERVE)
    _check(history, WINDOW - RESERVE, question)
    assert history.summarised
    assert history.messages[1] == {"role": "system", "content": SUMMARY_PREFIX + summary}
    verbatim = [m["content"] for m in history.messages[2:-1]]
    assert verbatim  # some recent turns still fit beside the summary
    covered = {m.content for m in stored[:16]}
    assert not covered & set(verbatim)  # nothing the summary covers is sent again
    assert verbatim == [m.content for m in stored[-len(verbatim) :]]  # the newest, in order

    # A token budget tighter than the window wins.
    tight = await service.history_for(db, conversation.id, new, window=WINDOW, reserve=RESERVE, budget=200)
    _check(tight, 200, question)
    assert len(tight.messages) < len(history.messages)


def test_everything_is_sent_verbatim_when_it_fits_even_with_a_summary() -> None:
    turns = [Turn(n, "user" if n % 2 else "assistant", f"short {n}", 8) for n in range(1, 5)]
    history = build_history(system_prompt="", summary="old news", summary_upto=2, turns=turns, limit=10_000)
    assert [m["content"] for m in history.messages] == ["short 1", "short 2", "short 3", "short 4"]
    assert (history.dropped, history.saved_tokens, history.summarised) == (0, 0, False)


def test_a_message_too_large_for_the_window_is_refused() -> None:
    turns = [Turn(1, "user", "x " * 300, tokens.count_message({"role": "user", "content": "x " * 300}))]
    with pytest.raises(ContextExceeded) as refused:
        build_history(system_prompt=SYSTEM, summary=None, summary_upto=None, turns=turns, limit=100)
    assert refused.value.reason_code == ReasonCode.TOKEN_CONTEXT_EXCEEDED


async def test_a_chat_turn_through_the_gateway_stores_both_messages(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    """The shape phase 2 plugs into: ``complete(principal, payload) -> Answer``, here the real /v1 route."""
    created = await client.post(
        "/api/v1/keys", headers=member.headers, json={"name": "chat", "scopes": ["chat"]}
    )
    key = created.json()["data"]["key"]
    principal: Principal = await app.state.identity.authenticate(key)
    sent: list[dict[str, Any]] = []

    async def complete(who: Principal, payload: dict[str, Any]) -> Answer:
        assert who is principal
        sent.append(payload)
        response = await client.post(
            "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=payload
        )
        assert response.status_code == 200, response.text
        return Answer(response.json()["choices"][0]["message"]["content"], verdict={"action": "allow"})

    db, bus = app.state.runtime.db, app.state.runtime.bus
    conversation = await service.create_conversation(
        db, Viewer(member.id), ConversationCreate(model="aiguardian-demo", system_prompt=SYSTEM)
    )
    turn = await service.chat_turn(
        db, bus, principal, conversation.id, "Hello there", complete=complete, window=WINDOW, reserve=RESERVE
    )
    assert sent[0]["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello there"},
    ]
    assert (turn.user.role, turn.user.content) == ("user", "Hello there")
    assert turn.assistant.role == "assistant"
    assert turn.assistant.content
    assert turn.assistant.verdict == {"action": "allow"}
    second = await service.chat_turn(
        db, bus, principal, conversation.id, "Again", complete=complete, window=WINDOW, reserve=RESERVE
    )
    assert [m["content"] for m in sent[1]["messages"][1:]] == ["Hello there", turn.assistant.content, "Again"]
    assert second.assistant.id > second.user.id > turn.assistant.id
