"""The ``anthropic`` provider: OpenAI chat completions in, Anthropic Messages API out, and back.

The translation functions are tested directly; then the official ``openai`` SDK talks to the real app,
which talks to a real (fake) Messages API server on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from aiguardian.app import create_app
from aiguardian.gateway.providers.anthropic import (
    DEFAULT_MAX_TOKENS,
    ChunkTranslator,
    SSEParser,
    to_chat_completion,
    to_messages_request,
)
from aiguardian.gateway.providers.base import UpstreamError
from aiguardian.settings import Settings
from tests.conftest import make_account, make_settings
from tests.fakes.anthropic_upstream import FakeAnthropic

UPSTREAM_KEY = "sk-ant-test-key"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

WEATHER_TOOL: ChatCompletionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# --- translation, without HTTP --------------------------------------------------------------------------


def test_system_and_developer_messages_become_the_top_level_system_prompt() -> None:
    request = to_messages_request(
        {
            "model": "claude-test",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
                {"role": "user", "content": "Hi"},
            ],
        },
        "claude-x",
    )
    assert request == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }


def test_text_and_image_parts_become_content_blocks() -> None:
    request = to_messages_request(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What are these?"},
                        {"type": "text", "text": ""},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.test/cat.jpg", "detail": "low"},
                        },
                    ],
                }
            ]
        },
        "claude-x",
    )
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "What are these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
    ]


def test_tool_calls_become_tool_use_and_consecutive_tool_results_share_one_user_turn() -> None:
    request = to_messages_request(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city":"Paris"}'},
                        },
                        {"id": "call_2", "type": "function", "function": {"name": "w", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "4C"}]},
                {"role": "user", "content": "Which is warmer?"},
            ]
        },
        "claude-x",
    )
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris and Oslo?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "w", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": [{"type": "text", "text": "4C"}]},
                {"type": "text", "text": "Which is warmer?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tools_and_tool_choice_translate(tool_choice: Any, parallel: Any, expected: Any) -> None:
    payload: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        payload["tool_choice"] = tool_choice
    if parallel is not None:
        payload["parallel_tool_calls"] = parallel
    request = to_messages_request(payload, "claude-x")
    assert request["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    assert request.get("tool_choice") == expected


def test_sampling_fields_stop_and_token_limits_translate() -> None:
    base: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}]}
    request = to_messages_request(
        {
            **base,
            "max_tokens": 50,
            "temperature": 0.3,
            "top_p": 0.9,
            "stop": "END",
            "stream": True,
            "seed": 1,
        },
        "claude-x",
    )
    assert request["max_tokens"] == 50
    assert (request["temperature"], request["top_p"], request["stop_sequences"]) == (0.3, 0.9, ["END"])
    assert request["stream"] is True
    assert "seed" not in request
    newer = to_messages_request(
        {**base, "max_tokens": 50, "max_completion_tokens": 70, "stop": ["a", "b"]}, "m"
    )
    assert (newer["max_tokens"], newer["stop_sequences"]) == (70, ["a", "b"])


@pytest.mark.parametrize(
    "payload",
    [
        {"n": 2, "messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,abc"}}]}
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}
            ]
        },
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
                }
            ]
        },
        {"messages": [{"role": "function", "content": "legacy"}]},
        {"messages": [{"role": "tool", "content": "no id"}]},
    ],
    ids=["n>1", "audio", "bad-data-url", "ftp-url", "bad-arguments", "function-role", "tool-without-id"],
)
def test_requests_the_messages_api_cannot_express_are_refused_without_retry(payload: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError) as caught:
        to_messages_request(payload, "claude-x")
    assert caught.value.status == 400
    assert caught.value.retryable is False


def test_response_text_blocks_join_and_tool_use_becomes_tool_calls() -> None:
    completion = to_chat_completion(
        {
            "id": "msg_1",
            "content": [
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 4},
        },
        "claude-test",
    )
    choice = completion["choices"][0]
    assert choice["message"]["content"] == "Let me check."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert choice["finish_reason"] == "tool_calls"
    assert completion["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 5,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
def test_stop_reasons_map_to_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    message = {"id": "m", "content": [{"type": "text", "text": "x"}], "stop_reason": stop_reason, "usage": {}}
    assert to_chat_completion(message, "m")["choices"][0]["finish_reason"] == finish_reason


def _event_stream() -> bytes:
    events = [
        (
            "message_start",
            {"type": "message_start", "message": {"id": "msg_9", "usage": {"input_tokens": 7}}},
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"a":'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": " 1}"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(f"event: {e}\r\ndata: {json.dumps(d)}\r\n\r\n".encode() for e, d in events)


def test_sse_parser_puts_events_split_anywhere_back_together() -> None:
    raw = _event_stream()
    whole = SSEParser().feed(raw)
    assert [e.event for e in whole][:3] == ["message_start", "ping", "content_block_start"]
    assert len(whole) == 11
    for cut in range(1, len(raw)):  # every split point, including inside "\r\n" and inside "é"
        parser = SSEParser()
        assert parser.feed(raw[:cut]) + parser.feed(raw[cut:]) == whole
    parser = SSEParser()
    assert [e for i in range(len(raw)) for e in parser.feed(raw[i : i + 1])] == whole


def test_stream_events_become_openai_chunks_then_usage_then_done() -> None:
    translator = ChunkTranslator("claude-test")
    out = b"".join(
        b for e in SSEParser().feed(_event_stream()) for b in translator.feed(e.event, json.loads(e.data))
    )
    events = out.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    assert all(c["id"] == "chatcmpl-msg_9" and c["object"] == "chat.completion.chunk" for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Héllo"},
        {
            "tool_calls": [
                {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": ""}}
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 5 + ["tool_calls"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 12, "total_tokens": 19}


def test_an_error_event_raises_an_upstream_error() -> None:
    translator = ChunkTranslator("claude-test")
    with pytest.raises(UpstreamError) as caught:
        translator.feed(
            "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    assert (caught.value.status, caught.value.message, caught.value.retryable) == (529, "Overloaded", True)


# --- through the app, with the openai SDK ---------------------------------------------------------------


@pytest.fixture
async def claude_upstream() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway_app(
    settings: Settings,  # cleans the PostgreSQL database when that is the backend
    tmp_path: Path,
    backend: str,
    pg_url: str | None,
    claude_upstream: FakeAnthropic,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[FastAPI]:
    monkeypatch.setenv("AIG_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)
    deployment = {
        "model": "claude-test",
        "provider": "anthropic",
        "base_url": claude_upstream.base_url,
        "api_key_env": "AIG_TEST_ANTHROPIC_KEY",
        "upstream_model": "claude-x",
    }
    # These tests are about the protocol translation: the guards (PII would redact "Ada") stay out of it.
    policy = tmp_path / "translation-only.yaml"
    policy.write_text("policies:\n  default:\n    input: [messages]\n    output: []\n    stream: []\n")
    application = create_app(
        make_settings(
            tmp_path,
            backend,
            pg_url,
            deployments=[deployment],
            gateway_retry_backoff_seconds=0.01,
            guards_policy_file=policy,
        )
    )
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30):
        yield application


@pytest.fixture
async def sdk(gateway_app: FastAPI) -> AsyncIterator[AsyncOpenAI]:
    account = await make_account(gateway_app)
    _, secret = await gateway_app.state.identity.create_key(account.id, "k", ["chat", "read"])
    transport = httpx.ASGITransport(app=gateway_app, client=("127.0.0.1", 50000))
    http = httpx.AsyncClient(transport=transport)
    # The SDK is typed for httpx2 but takes an httpx client too, which is what can carry an ASGI transport.
    client = AsyncOpenAI(
        api_key=secret,
        base_url="http://testserver/v1",
        http_client=http,  # type: ignore[arg-type]
        max_retries=0,
    )
    yield client
    await client.close()
    await http.aclose()


async def test_plain_chat_puts_the_system_prompt_on_top_and_authenticates_upstream(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    completion = await sdk.chat.completions.create(
        model="claude-test",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
    )
    assert completion.model == "claude-test"
    assert completion.choices[0].message.content == "Echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 3)
    assert completion.usage.total_tokens == 7
    sent = claude_upstream.last
    assert sent.headers["x-api-key"] == UPSTREAM_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert sent.body == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
    }


async def test_a_multi_turn_conversation_keeps_its_turns_in_order(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    completion = await sdk.chat.completions.create(
        model="claude-test",
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    assert completion.choices[0].message.content == "Echo: What is my name?"
    assert [(m["role"], m["content"][0]["text"]) for m in claude_upstream.last.body["messages"]] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello Ada."),
        ("user", "What is my name?"),
    ]


async def test_a_tool_call_round_trip(sdk: AsyncOpenAI, claude_upstream: FakeAnthropic) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await sdk.chat.completions.create(model="claude-test", messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert claude_upstream.last.body["tools"][0]["input_schema"]["required"] == ["city"]

    messages.append(choice.message.model_dump(exclude_none=True))  # type: ignore[arg-type]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"})
    second = await sdk.chat.completions.create(model="claude-test", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "The tool said: 18 degrees and sunny"
    assert second.choices[0].finish_reason == "stop"
    assistant, result = claude_upstream.last.body["messages"][1:]
    assert assistant["content"][1] == {
        "type": "tool_use",
        "id": call.id,
        "name": "get_weather",
        "input": {"city": "Paris", "unit": "celsius"},
    }
    assert result == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees and sunny"}],
    }


async def test_a_named_tool_choice_forces_that_tool(sdk: AsyncOpenAI, claude_upstream: FakeAnthropic) -> None:
    completion = await sdk.chat.completions.create(
        model="claude-test",
        messages=[{"role": "user", "content": "Anything"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert claude_upstream.last.body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert completion.choices[0].message.content is None
    assert completion.choices[0].message.tool_calls is not None


async def test_images_reach_the_upstream_as_image_blocks(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    completion = await sdk.chat.completions.create(
        model="claude-test",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == "Echo: Compare [2 images]"
    sources = [b["source"] for b in claude_upstream.last.body["messages"][0]["content"][1:]]
    assert sources == [
        {"type": "base64", "media_type": "image/png", "data": PNG},
        {"type": "url", "url": "https://example.test/cat.jpg"},
    ]


async def test_streamed_text_joins_up_and_usage_comes_last(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    stream = await sdk.chat.completions.create(
        model="claude-test",
        messages=[{"role": "user", "content": "stream me some words please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert claude_upstream.last.body["stream"] is True
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream me some words please"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 6
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (5, 6)


async def test_streamed_usage_is_left_out_unless_asked_for(sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_streamed_tool_call_deltas_assemble_into_a_call(sdk: AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model="claude-test",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    content, finish = "", None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for part in delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            if part.function is not None:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    assert content == "Let me check."
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"].startswith("toolu_")
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(
    ("options", "finish", "text"),
    [
        ({}, "stop", "Echo: one two three four"),
        ({"max_tokens": 3}, "length", "Echo: one two"),
        ({"stop": ["three"]}, "stop", "Echo: one two "),
    ],
    ids=["end_turn", "max_tokens", "stop_sequence"],
)
async def test_stop_reasons_reach_the_client_as_finish_reasons(
    sdk: AsyncOpenAI,
    claude_upstream: FakeAnthropic,
    stream: bool,
    options: dict[str, Any],
    finish: str,
    text: str,
) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three four"}]
    if stream:
        chunks = [
            c
            async for c in await sdk.chat.completions.create(
                model="claude-test", messages=messages, stream=True, **options
            )
        ]
        got_text = "".join(c.choices[0].delta.content or "" for c in chunks)
        got_finish = chunks[-1].choices[0].finish_reason
    else:
        completion = await sdk.chat.completions.create(model="claude-test", messages=messages, **options)
        got_text, got_finish = (
            completion.choices[0].message.content or "",
            completion.choices[0].finish_reason,
        )
    assert (got_text, got_finish) == (text, finish)
    if "stop" in options:
        assert claude_upstream.last.body["stop_sequences"] == ["three"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_an_overloaded_upstream_529_is_retried(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic, stream: bool
) -> None:
    claude_upstream.fail_next("529")
    raw = await sdk.chat.completions.with_raw_response.create(
        model="claude-test", messages=[{"role": "user", "content": "hi"}], stream=stream
    )
    assert raw.headers["X-AIG-Attempts"] == "2"
    assert len(claude_upstream.requests) == 2
    parsed = raw.parse()
    if isinstance(parsed, openai.AsyncStream):
        text = "".join([c.choices[0].delta.content or "" async for c in parsed])
    else:
        text = parsed.choices[0].message.content or ""
    assert text == "Echo: hi"


async def test_malformed_upstream_json_is_retried(sdk: AsyncOpenAI, claude_upstream: FakeAnthropic) -> None:
    claude_upstream.fail_next("malformed")
    completion = await sdk.chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == "Echo: hi"
    assert len(claude_upstream.requests) == 2


async def test_an_upstream_429_passes_its_retry_after_on(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    claude_upstream.fail_next("429")
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model="claude-test", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.response.headers["Retry-After"] == "7"
    assert caught.value.code == "U1_upstream_rate_limited"
    assert len(claude_upstream.requests) == 1  # the deployment rests for the 7 seconds it was told to


async def test_an_upstream_400_is_passed_on_as_400_and_not_retried(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "hi"}], temperature=1.5
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "U2_upstream_rejected"
    assert "temperature: range: 0..1" in caught.value.message
    assert len(claude_upstream.requests) == 1


async def test_a_request_the_provider_cannot_translate_is_a_400_that_never_leaves(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(
            model="claude-test", messages=[{"role": "user", "content": "hi"}], n=2
        )
    assert caught.value.code == "U2_upstream_rejected"
    with pytest.raises(openai.BadRequestError, match="no embeddings endpoint"):
        await sdk.embeddings.create(model="claude-test", input="hi")
    assert claude_upstream.requests == []


async def test_an_error_event_mid_stream_ends_the_stream_with_an_error_event(
    sdk: AsyncOpenAI, claude_upstream: FakeAnthropic
) -> None:
    claude_upstream.fail_next("error_event")
    stream = await sdk.chat.completions.create(
        model="claude-test", messages=[{"role": "user", "content": "tell me a long story"}], stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "Echo: tell "
    assert caught.value.code == "U3_upstream_stream_broken"
    assert "Overloaded" in caught.value.message
    assert len(claude_upstream.requests) == 1  # chunks had gone out: too late to retry
