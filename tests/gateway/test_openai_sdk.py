"""The official ``openai`` SDK against ``/v1``: sync and async, streaming, tools, JSON mode, images,
embeddings, models, pass-through of fields, headers, and the errors every SDK user will meet."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionContentPartParam,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)

from tests.fakes.openai_upstream import OpenAIUpstream, embedding_vector
from tests.gateway.conftest import MODEL, PROVIDER_KEY_ENV, UPSTREAM_MODEL, Launch, Served, deployment

GATEWAY_HEADERS = ("x-request-id", "x-aig-overhead-ms", "x-aig-deployment", "x-aig-cache")
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def assert_gateway_headers(headers: httpx.Headers, deployment_id: str = "primary") -> None:
    missing = [name for name in GATEWAY_HEADERS if name not in headers]
    assert not missing, f"missing {missing} in {dict(headers)}"
    assert headers["x-aig-deployment"] == deployment_id
    assert headers["x-aig-cache"] == "off", "no deployment here opts into the answer cache"
    assert float(headers["x-aig-overhead-ms"]) >= 0


# --- the sync client, through a real server process ------------------------------------------------------


@pytest.mark.slow
def test_sync_client_chats_and_streams_through_a_real_server(served: Served) -> None:
    client = openai.OpenAI(base_url=served.base_url + "/v1", api_key=served.key, max_retries=0, timeout=10)

    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert_gateway_headers(raw.headers)  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content == "fake reply to: hello there"
    assert answer.model == MODEL
    assert answer.usage is not None
    assert answer.usage.total_tokens > 0

    stream = client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() == "fake reply to: hello there"

    calls = served.upstream.calls()
    assert [c.body and c.body["model"] for c in calls] == [UPSTREAM_MODEL, UPSTREAM_MODEL]
    assert all(c.headers["Authorization"] == f"Bearer {served.provider_key}" for c in calls)
    assert served.provider_key not in served.server.logs()


# --- the async client, in process -----------------------------------------------------------------------


async def test_async_chat_answers_in_openai_format_with_the_gateway_headers(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    raw = await gateway.sdk().chat.completions.with_raw_response.create(model=MODEL, messages=HELLO)
    assert_gateway_headers(raw.headers)  # type: ignore[arg-type]
    assert raw.headers["x-aig-attempts"] == "1"
    answer = raw.parse()
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "fake reply to: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 5
    assert answer.model == MODEL, "the client sees the name it asked for"
    assert upstream.last.body is not None
    assert upstream.last.body["model"] == UPSTREAM_MODEL


async def test_provider_key_is_sent_as_bearer_and_never_logged(
    launch: Launch,
    upstream: OpenAIUpstream,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    provider_key = "prov-0123456789abcdef0123456789abcdef"
    monkeypatch.setenv(PROVIDER_KEY_ENV, provider_key)
    gateway = await launch(deployment(upstream, api_key_env=PROVIDER_KEY_ENV), log_level="DEBUG")
    upstream.script("500", "ok", "400")  # failures are logged too: the key must not be in those lines either
    client = gateway.sdk()
    await client.chat.completions.create(model=MODEL, messages=HELLO)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=HELLO)
    await client.embeddings.create(model=MODEL, input="hi")

    assert len(upstream.requests) == 4
    assert {r.headers.get("Authorization") for r in upstream.requests} == {f"Bearer {provider_key}"}
    assert all(gateway.key not in str(r.headers) for r in upstream.requests), "our key stays with us"
    logged = capsys.readouterr()
    assert "upstream call failed" in logged.out + logged.err, "the test saw the log lines it checks"
    assert provider_key not in logged.out + logged.err


async def test_streaming_chunks_arrive_and_include_usage_adds_a_usage_chunk(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    raw = await gateway.sdk().chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    assert_gateway_headers(raw.headers)  # type: ignore[arg-type]
    chunks = [chunk async for chunk in raw.parse()]
    assert len(chunks) >= 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip() == (
        "fake reply to: hello there"
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    assert all(c.model == MODEL for c in chunks)
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("delivery", ["ok", "fragmented"])
async def test_streaming_without_include_usage_sends_no_empty_choices_chunk(
    launch: Launch, upstream: OpenAIUpstream, delivery: str
) -> None:
    """The gateway asks the upstream for usage anyway (to account for it) and drops that chunk, also when
    the upstream's events arrive split across TCP writes."""
    gateway = await launch()
    upstream.script(delivery)
    stream = await gateway.sdk().chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks, "chunks arrived"
    assert all(c.choices for c in chunks), "no chunk with an empty choices list"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == "fake reply to: hello there"
    assert upstream.last.body is not None
    assert upstream.last.body["stream_options"] == {"include_usage": True}


async def test_tools_come_back_as_tool_calls_the_sdk_parses(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    tools: list[ChatCompletionToolParam] = [
        {
            "type": "function",
            "function": {
                "name": "lookup_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    client = gateway.sdk()
    answer = await client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        tools=tools,
        tool_choice="auto",
    )
    call = answer.choices[0].message.tool_calls
    assert call is not None
    assert len(call) == 1
    assert answer.choices[0].finish_reason == "tool_calls"
    assert call[0].type == "function"
    assert call[0].function.name == "lookup_weather"
    assert json.loads(call[0].function.arguments) == {"echo": "hello there"}
    assert upstream.last.body is not None
    assert upstream.last.body["tools"] == tools
    assert upstream.last.body["tool_choice"] == "auto"

    stream = await client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        tools=tools,
        stream=True,
    )
    arguments = ""
    names = set()
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.function and delta.function.name:
                names.add(delta.function.name)
            arguments += (delta.function.arguments or "") if delta.function else ""
    assert names == {"lookup_weather"}
    assert json.loads(arguments) == {"echo": "hello there"}


async def test_json_mode_returns_json_content(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    answer = await gateway.sdk().chat.completions.create(
        model=MODEL, messages=HELLO, response_format={"type": "json_object"}
    )
    content = answer.choices[0].message.content
    assert content is not None
    assert json.loads(content) == {"echo": "hello there"}
    assert upstream.last.body is not None
    assert upstream.last.body["response_format"] == {"type": "json_object"}


async def test_images_in_messages_pass_through_unchanged(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    pixel = base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really-a-png").decode()
    content: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
    ]
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": content},
    ]
    answer = await gateway.sdk().chat.completions.create(model=MODEL, messages=messages)
    assert answer.choices[0].message.content == "fake reply to: what is in this picture?"
    assert upstream.last.body is not None
    assert upstream.last.body["messages"] == messages


async def test_extra_fields_pass_through_to_the_upstream(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    await gateway.sdk().chat.completions.create(
        model=MODEL,
        messages=HELLO,
        temperature=0.25,
        top_p=0.5,
        max_tokens=17,
        seed=42,
        stop=["\n\n"],
        logit_bias={"1234": -100},
        user="end-user-7",
        extra_body={"vendor_option": {"nested": [1, 2, 3]}, "repetition_penalty": 1.1},
    )
    body = upstream.last.body
    assert body is not None
    expected = {
        "model": UPSTREAM_MODEL,
        "messages": HELLO,
        "temperature": 0.25,
        "top_p": 0.5,
        "max_tokens": 17,
        "seed": 42,
        "stop": ["\n\n"],
        "logit_bias": {"1234": -100},
        "user": "end-user-7",
        "vendor_option": {"nested": [1, 2, 3]},
        "repetition_penalty": 1.1,
    }
    assert {k: body.get(k) for k in expected} == expected
    assert "stream" not in body or body["stream"] is False


async def test_embeddings_in_float_and_base64(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    client = gateway.sdk()
    raw = await client.embeddings.with_raw_response.create(
        model=MODEL, input=["alpha", "beta"], encoding_format="float"
    )
    assert_gateway_headers(raw.headers)  # type: ignore[arg-type]
    floats = raw.parse()
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == pytest.approx(embedding_vector("alpha"))
    assert floats.model == MODEL
    assert floats.usage.prompt_tokens == 2

    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = await client.embeddings.create(model=MODEL, input="alpha", dimensions=4)
    assert upstream.last.body is not None
    assert upstream.last.body["encoding_format"] == "base64"
    assert upstream.last.body["model"] == UPSTREAM_MODEL
    expected = struct.unpack("<4f", struct.pack("<4f", *embedding_vector("alpha", 4)))
    assert decoded.data[0].embedding == pytest.approx(list(expected))


async def test_models_lists_the_deployments_and_a_clearly_named_demo_model(launch: Launch) -> None:
    gateway = await launch()
    models = {m.id: m for m in (await gateway.sdk().models.list()).data}
    assert set(models) == {MODEL, "aiguardian-demo"}
    assert "no LLM" in models["aiguardian-demo"].owned_by
    assert models[MODEL].owned_by == "aiguardian"


async def test_demo_model_answers_offline_and_says_so(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    client = gateway.sdk()
    answer = await client.chat.completions.create(model="aiguardian-demo", messages=HELLO)
    assert answer.choices[0].message.content is not None
    assert answer.choices[0].message.content.startswith("[AIGuardian demo model: no LLM was called]")
    stream = await client.chat.completions.create(model="aiguardian-demo", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert "no LLM was called" in text
    vectors = await client.embeddings.create(model="aiguardian-demo", input=["a", "b"])
    raw = await gateway.http.post(
        "/v1/embeddings",
        json={"model": "aiguardian-demo", "input": "a", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {gateway.key}"},
    )
    encoded = raw.json()["data"][0]["embedding"]
    assert isinstance(encoded, str), "base64 when asked for"
    assert list(struct.unpack("<16f", base64.b64decode(encoded))) == pytest.approx(vectors.data[0].embedding)
    assert len(vectors.data) == 2
    assert len(vectors.data[0].embedding) == 16
    assert upstream.requests == [], "the demo model calls nothing"


# --- errors the SDK raises ------------------------------------------------------------------------------


async def test_no_key_is_an_authentication_error(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    with pytest.raises(openai.AuthenticationError) as caught:
        await gateway.sdk().chat.completions.create(
            model=MODEL, messages=HELLO, extra_headers={"Authorization": openai.Omit()}
        )
    assert caught.value.code == "G0_auth_not_configured"
    assert caught.value.response.headers["x-request-id"]
    assert upstream.requests == []


async def test_a_key_without_the_chat_scope_is_permission_denied(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    reader = await gateway.key_with(["read"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await gateway.sdk(reader).chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.code == "G2_scope_missing"
    assert upstream.requests == []


async def test_an_unknown_model_is_not_found(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    with pytest.raises(openai.NotFoundError) as caught:
        await gateway.sdk().chat.completions.create(model="gpt-nonexistent", messages=HELLO)
    assert caught.value.code == "U0_model_not_found"
    assert "gpt-nonexistent" in caught.value.message
    assert upstream.requests == []


async def test_a_malformed_body_is_422_in_openai_format_naming_the_field(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await gateway.sdk().chat.completions.create(model=MODEL, messages=[])
    assert caught.value.code == "E1_validation_error"
    assert caught.value.param is not None
    assert caught.value.param.split(".")[-1] == "messages"
    assert caught.value.type == "invalid_request_error"

    not_json = await gateway.http.post(
        "/v1/chat/completions",
        content=b'{"model": "gpt-fake", "messages": [',
        headers={"Authorization": f"Bearer {gateway.key}", "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    assert not_json.json()["error"]["code"] == "E1_malformed_json"
    assert upstream.requests == []
