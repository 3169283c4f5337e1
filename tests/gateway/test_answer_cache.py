"""The answer cache, through the openai SDK against the fake upstream (which counts its calls): a repeated
request is answered with no upstream call, no cost and no budget spent, and the ledger says what it saved;
it is used only when asked for, never across models, request bodies or users (unless configured)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from aiguardian.usage.schemas import BudgetCreate
from tests.fakes.openai_upstream import OpenAIUpstream
from tests.gateway.conftest import MODEL, GatewayApp, Launch, deployment, make_member
from tests.usage.conftest import held, ledger

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
USE = {"X-AIG-Cache": "use"}
PRICES = {MODEL: {"input_per_mtok": 1000, "output_per_mtok": 2000}}


async def ask(gateway: GatewayApp, api_key: str | None = None, **fields: Any) -> Any:
    """A chat completion through the SDK; the raw response, for the headers."""
    fields = {"model": MODEL, "messages": HELLO, **fields}
    return await gateway.sdk(api_key).chat.completions.with_raw_response.create(**fields)


async def streamed(gateway: GatewayApp, **fields: Any) -> tuple[httpx.Headers, str, Any]:
    """A streamed completion through the SDK: (headers, text, the usage chunk's usage or None)."""
    raw = await ask(gateway, stream=True, **fields)
    text, usage = [], None
    async for chunk in raw.parse():
        usage = chunk.usage or usage
        text += [c.delta.content or "" for c in chunk.choices]
    return raw.headers, "".join(text), usage


async def test_a_repeated_request_is_answered_from_the_cache_at_no_cost_and_the_ledger_says_what_it_saved(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(prices=PRICES)
    usage = gateway.app.state.usage
    await usage.create_budget(BudgetCreate(scope="global", period="day", limit_usd=Decimal(100)), None)

    first = await ask(gateway, extra_headers=USE)
    assert first.headers["x-aig-cache"] == "miss"
    assert Decimal(first.headers["x-aig-cost"]) > 0
    second = await ask(gateway, extra_headers=USE)
    assert second.headers["x-aig-cache"] == "hit"
    assert Decimal(second.headers["x-aig-cost"]) == 0
    assert second.headers["x-aig-attempts"] == "0"
    assert second.parse().model_dump() == first.parse().model_dump()
    assert len(upstream.calls()) == 1, "the hit made no upstream call"

    rows = await ledger(gateway.app)
    assert [(r.cache_hit, r.status) for r in rows] == [(False, "ok"), (True, "ok")]
    answered, hit = rows
    assert (hit.prompt_tokens, hit.completion_tokens, hit.cost) == (0, 0, 0)
    assert hit.saved_tokens == answered.prompt_tokens + answered.completion_tokens > 0
    assert hit.saved_cost == answered.cost > 0
    assert hit.deployment is None
    # The hit's reservation was released and nothing spent: the budget holds only the first answer.
    assert await held(gateway.app) == 0
    [budget] = await usage.list_budgets()
    assert budget.spent_usd == answered.cost
    summary = await usage.summary(user_id=None, since=None, until=None)
    assert (summary.totals.cache_hits, summary.totals.saved_tokens) == (1, hit.saved_tokens)
    assert summary.totals.saved_cost_usd == answered.cost
    assert summary.totals.cost_usd == answered.cost


async def test_a_deployment_with_cache_true_caches_by_default_and_a_request_may_opt_out_or_refresh(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment(upstream, cache=True))
    assert (await ask(gateway)).headers["x-aig-cache"] == "miss"
    assert (await ask(gateway)).headers["x-aig-cache"] == "hit"
    assert len(upstream.calls()) == 1

    skipped = await ask(gateway, extra_headers={"X-AIG-Cache": "skip"})
    assert skipped.headers["x-aig-cache"] == "off"
    assert len(upstream.calls()) == 2

    # no-cache: a fresh answer, which then replaces the stored one.
    upstream.script("ok")
    refreshed = await ask(gateway, extra_headers={"Cache-Control": "no-cache"})
    assert refreshed.headers["x-aig-cache"] == "miss"
    assert len(upstream.calls()) == 3
    again = await ask(gateway)
    assert again.headers["x-aig-cache"] == "hit"
    assert again.parse().id == refreshed.parse().id


async def test_without_opting_in_nothing_is_cached_and_no_store_keeps_an_answer_out(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    for _ in range(2):
        assert (await ask(gateway)).headers["x-aig-cache"] == "off"
    assert len(upstream.calls()) == 2

    kept_out = await ask(gateway, extra_headers={**USE, "Cache-Control": "no-store"})
    assert kept_out.headers["x-aig-cache"] == "miss"
    assert (await ask(gateway, extra_headers=USE)).headers["x-aig-cache"] == "miss"
    assert len(upstream.calls()) == 4


async def test_the_key_is_the_whole_request_and_never_crosses_models(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(
        deployment(upstream, id="main", upstream_model="up-main", cache=True),
        deployment(upstream, id="other", model="gpt-other", upstream_model="up-other", cache=True),
        fallbacks={MODEL: ["gpt-other"]},
        gateway_max_retries=1,
    )
    await ask(gateway)
    other = await ask(gateway, model="gpt-other")
    assert other.headers["x-aig-cache"] == "miss", "the same messages for another model"
    for changed in ({"temperature": 0.5}, {"messages": [{"role": "user", "content": "hello"}]}, {"n": 2}):
        assert (await ask(gateway, **changed)).headers["x-aig-cache"] == "miss", changed
    assert (await ask(gateway, user="someone-else")).headers["x-aig-cache"] == "hit", (
        "`user` is not in the key"
    )
    assert len(upstream.calls()) == 5

    # An answer that came from the fallback model is not stored as this model's answer.
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "fallback?"}]
    upstream.script("500", model="up-main")
    fell_back = await ask(gateway, messages=question)
    assert fell_back.headers["x-aig-deployment"] == "other"
    direct = await ask(gateway, messages=question)
    assert direct.headers["x-aig-cache"] == "miss"
    assert direct.headers["x-aig-deployment"] == "main"
    assert [r.body and r.body["model"] for r in upstream.calls()[-3:]] == ["up-main", "up-other", "up-main"]


async def test_entries_are_shared_by_a_users_keys_but_not_between_users(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment(upstream, cache=True))
    await ask(gateway)
    same_user = await gateway.key_with(["chat"])
    assert (await ask(gateway, same_user)).headers["x-aig-cache"] == "hit"
    _, stranger = await make_member(gateway.app, ["chat"])
    assert (await ask(gateway, stranger)).headers["x-aig-cache"] == "miss"
    assert len(upstream.calls()) == 2


async def test_with_the_global_scope_every_caller_shares_entries(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment(upstream, cache=True), gateway_cache_scope="global")
    await ask(gateway)
    _, stranger = await make_member(gateway.app, ["chat"])
    assert (await ask(gateway, stranger)).headers["x-aig-cache"] == "hit"
    assert len(upstream.calls()) == 1


async def test_a_stream_is_replayed_from_a_cached_answer_and_a_finished_stream_is_stored(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment(upstream, cache=True), prices=PRICES)
    answer = (await ask(gateway)).parse()
    headers, text, usage = await streamed(gateway, stream_options={"include_usage": True})
    assert headers["x-aig-cache"] == "hit"
    assert Decimal(headers["x-aig-cost"]) == 0
    assert text == answer.choices[0].message.content
    assert usage is not None
    assert answer.usage is not None
    assert usage.total_tokens == answer.usage.total_tokens
    assert len(upstream.calls()) == 1

    # A stream that finished is stored as the completion it amounts to: a plain request then hits it.
    question: list[ChatCompletionMessageParam] = [{"role": "user", "content": "stream me"}]
    headers, text, _ = await streamed(gateway, messages=question)
    assert headers["x-aig-cache"] == "miss"
    assert len(upstream.calls()) == 2
    hit = await ask(gateway, messages=question)
    assert hit.headers["x-aig-cache"] == "hit"
    completion = hit.parse()
    assert completion.choices[0].message.content == text
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.completion_tokens > 0
    raw = await gateway.http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": question, "stream": True},
        headers={"Authorization": f"Bearer {gateway.key}"},
    )
    assert raw.headers["x-aig-cache"] == "hit"
    assert raw.text.endswith("data: [DONE]\n\n: X-AIG-Cost 0.000000000\n\n")
    assert len(upstream.calls()) == 2

    rows = await ledger(gateway.app)
    assert [(r.stream, r.cache_hit) for r in rows] == [
        (False, False),
        (True, True),
        (True, False),
        (False, True),
        (True, True),
    ]
    assert all(r.cost == 0 and r.saved_cost > 0 for r in rows if r.cache_hit)


async def test_a_stream_cut_midway_and_tool_calls_in_a_stream_are_not_stored(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment(upstream, cache=True))
    upstream.script("cut:3")
    with pytest.raises(openai.APIError) as caught:
        await streamed(gateway)
    assert caught.value.code == "U3_upstream_stream_broken"
    assert (await ask(gateway)).headers["x-aig-cache"] == "miss", "the broken stream was not stored"

    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    headers, _, _ = await streamed(gateway, tools=tools)
    assert headers["x-aig-cache"] == "miss"
    assert (await ask(gateway, tools=tools)).headers["x-aig-cache"] == "miss"
    # A tool call answered without streaming is stored, and replays as a stream with the same call.
    raw = await ask(gateway, tools=tools, stream=True)
    assert raw.headers["x-aig-cache"] == "hit"
    names = [
        call.function.name
        async for chunk in raw.parse()
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function
    ]
    assert names == ["lookup"]
    assert len(upstream.calls()) == 4
