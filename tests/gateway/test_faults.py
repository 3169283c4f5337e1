"""The upstream misbehaving, through the fake provider on loopback: every fault ends in a retry, a fallback,
or a clean OpenAI-format error with a reason code, and in bounded time (each in-process request is bounded
by the gateway fixtures' transport; the process tests by their clients' timeouts).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from aiguardian.core.breaker import BreakerState
from aiguardian.gateway.service import StreamUsage
from tests.fakes.openai_upstream import OpenAIUpstream, stream_events
from tests.gateway.conftest import MODEL, PROVIDER_KEY_ENV, GatewayApp, Launch, Served, deployment

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def two_deployments(upstream: OpenAIUpstream) -> tuple[dict[str, object], dict[str, object]]:
    """The same model on two deployments: ``primary`` first, ``secondary`` behind it."""
    return (
        deployment(upstream, id="primary", upstream_model="up-primary", priority=0),
        deployment(upstream, id="secondary", upstream_model="up-secondary", priority=1),
    )


async def chat(gateway: GatewayApp, **fields: object) -> httpx.Response:
    """A raw call, for the status, the headers and the error body exactly as sent."""
    body = {"model": MODEL, "messages": HELLO, **fields}
    return await gateway.http.post(
        "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {gateway.key}"}
    )


def error_of(response: httpx.Response) -> dict[str, object]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    assert {"message", "type", "code"} <= set(error), "OpenAI's error format"
    return error


async def deployment_status(gateway: GatewayApp, deployment_id: str) -> dict[str, object]:
    status = (await gateway.http.get("/api/v1/status")).json()["data"]
    rows = {row["id"]: row for row in status["components"]["deployments"]["detail"]["deployments"]}
    return rows[deployment_id]  # type: ignore[no-any-return]


# --- retries and fallbacks ------------------------------------------------------------------------------


async def test_a_500_is_retried_and_the_retry_succeeds(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    upstream.script("500", "ok")
    response = await chat(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["x-aig-attempts"] == "2"
    assert response.json()["choices"][0]["message"]["content"] == "fake reply to: hello there"
    assert [r.step for r in upstream.calls()] == ["500", "ok"]


async def test_a_500_on_the_primary_falls_back_to_the_secondary_deployment(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(*two_deployments(upstream))
    upstream.always("500")
    upstream.script("ok", model="up-secondary")
    response = await chat(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["x-aig-deployment"] == "secondary"
    assert response.json()["model"] == MODEL
    assert [r.body and r.body["model"] for r in upstream.calls()] == ["up-primary", "up-secondary"]


async def test_a_failing_model_falls_back_to_its_fallback_model(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(
        deployment(upstream, id="main", upstream_model="up-main"),
        deployment(upstream, id="backup", model="gpt-backup", upstream_model="up-backup"),
        fallbacks={MODEL: ["gpt-backup"]},
        gateway_max_retries=1,
    )
    upstream.script("503", model="up-main")
    streamed = await gateway.sdk().chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
    )
    assert streamed.headers["x-aig-deployment"] == "backup"
    text = "".join([c.choices[0].delta.content or "" async for c in streamed.parse()])
    assert text.strip() == "fake reply to: hello there"
    assert [r.body and r.body["model"] for r in upstream.calls()] == ["up-main", "up-backup"]


async def test_a_stream_failing_before_its_first_event_is_retried(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    upstream.script("502", "empty", "ok")
    stream = await gateway.sdk().chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.strip() == "fake reply to: hello there"
    assert [r.step for r in upstream.calls()] == ["502", "empty", "ok"]


# --- rate limits ----------------------------------------------------------------------------------------


async def test_a_429_opens_that_deployments_breaker_for_retry_after_and_traffic_moves_on(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(*two_deployments(upstream))
    upstream.script("429:1", model="up-primary")
    first = await chat(gateway)
    assert first.status_code == 200, first.text
    assert first.headers["x-aig-deployment"] == "secondary"
    row = await deployment_status(gateway, "primary")
    assert row["breaker"] == "open"
    assert row["state"] != "healthy"

    second = await chat(gateway)
    assert second.headers["x-aig-deployment"] == "secondary"
    assert len(upstream.calls(model="up-primary")) == 1, "the rate-limited deployment was not called"

    await asyncio.sleep(1.05)  # the Retry-After is over: the primary gets its probe
    assert gateway.health("primary").breaker.state is BreakerState.HALF_OPEN
    third = await chat(gateway)
    assert third.headers["x-aig-deployment"] == "primary"
    assert (await deployment_status(gateway, "primary"))["breaker"] == "closed"


async def test_a_429_with_a_single_deployment_is_passed_on_with_retry_after(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    upstream.script("429:3")
    with pytest.raises(openai.RateLimitError) as caught:
        await gateway.sdk().chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.code == "U1_upstream_rate_limited"
    assert caught.value.response.headers["retry-after"] == "3"
    assert len(upstream.calls()) == 1, "no retry against a deployment that asked us to wait"

    # While the provider's wait lasts, callers hear the same, with the time left, and nothing is sent.
    again = await chat(gateway)
    assert again.status_code == 429
    assert error_of(again)["code"] == "U1_upstream_rate_limited"
    assert 1 <= int(again.headers["retry-after"]) <= 3
    assert len(upstream.calls()) == 1


# --- broken answers -------------------------------------------------------------------------------------


async def test_a_timeout_is_504_after_a_bounded_number_of_tries(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment(upstream, timeout=0.5), gateway_max_retries=2)
    upstream.always("hang:5")
    started = time.monotonic()
    response = await chat(gateway)
    took = time.monotonic() - started
    assert response.status_code == 504
    assert error_of(response)["code"] == "U1_upstream_timeout"
    assert len(upstream.calls()) == 3, "one try and two retries"
    assert 1.5 <= took < 4, f"three 0.5 s timeouts took {took:.2f}s"


async def test_malformed_json_is_retried_then_answered_502(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    upstream.always("malformed")
    with pytest.raises(openai.InternalServerError) as caught:
        await gateway.sdk().chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.status_code == 502
    assert caught.value.code == "U1_upstream_unavailable"
    assert len(upstream.calls()) == 3


async def test_a_body_cut_halfway_is_retried(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    upstream.script("cut", "ok")
    response = await chat(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["x-aig-attempts"] == "2"


async def test_an_upstream_400_is_passed_on_and_not_retried(launch: Launch, upstream: OpenAIUpstream) -> None:
    gateway = await launch()
    upstream.script("400")
    with pytest.raises(openai.BadRequestError) as caught:
        await gateway.sdk().chat.completions.create(model=MODEL, messages=HELLO)
    assert caught.value.code == "U2_upstream_rejected"
    assert "fake upstream answered 400" in caught.value.message
    assert len(upstream.calls()) == 1


async def test_an_upstream_refusing_our_provider_key_is_not_the_callers_auth_error(
    launch: Launch, upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider_key = "prov-refused-0123456789abcdef"
    monkeypatch.setenv(PROVIDER_KEY_ENV, provider_key)
    gateway = await launch(deployment(upstream, api_key_env=PROVIDER_KEY_ENV))
    upstream.script("401")
    response = await chat(gateway)
    assert response.status_code == 502, "an SDK would report a 401 as the caller's own key being wrong"
    assert error_of(response)["code"] == "U1_upstream_unavailable"
    assert provider_key not in response.text
    assert provider_key not in str(gateway.health("primary").last_error)
    assert len(upstream.calls()) == 1


# --- streams that break ---------------------------------------------------------------------------------


async def test_a_stream_cut_midway_ends_with_a_stream_broken_event(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch()
    upstream.script("cut:3")
    stream = await gateway.sdk().chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert caught.value.code == "U3_upstream_stream_broken"
    assert "".join(received) == "fake reply ", "the chunks before the cut arrived"

    upstream.script("cut:3")
    raw = await chat(gateway, stream=True)
    events = [e for e in raw.content.split(b"\n\n") if e.startswith(b"data: ")]
    assert b"[DONE]" not in raw.content
    assert orjson.loads(events[-1][6:])["error"]["code"] == "U3_upstream_stream_broken"
    assert len(events) == 4, "three events passed on, then the error"


async def test_a_stream_broken_after_its_first_chunk_counts_against_the_deployments_health(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(deployment_breaker_threshold=2, gateway_max_retries=0)
    whole = await chat(gateway, stream=True)
    assert b"data: [DONE]" in whole.content
    health = gateway.health("primary")
    assert (health.requests, health.failures) == (1, 0)

    for _ in range(2):
        upstream.script("cut:3")
        cut = await chat(gateway, stream=True)
        assert b"U3_upstream_stream_broken" in cut.content
    assert (health.requests, health.failures) == (3, 2), "each broken stream is one failed request"
    assert health.breaker.state is BreakerState.OPEN, "two breaks in a row reach the threshold"
    row = await deployment_status(gateway, "primary")
    assert (row["state"], row["breaker"], row["requests"]) == ("unhealthy", "open", 3)
    assert row["error_rate"] == round(2 / 3, 4)

    skipped = await chat(gateway, stream=True)
    assert skipped.status_code == 503
    assert len(upstream.calls()) == 3, "the open breaker kept the next stream from the deployment"


@pytest.mark.parametrize("separator", [b"\n\n", b"\r\n\r\n"])
def test_the_usage_chunk_is_read_and_dropped_wherever_the_network_splits_the_stream(
    separator: bytes,
) -> None:
    body = {"model": MODEL, "messages": HELLO, "stream_options": {"include_usage": True}}
    events = [e.replace(b"\n\n", separator) for e in stream_events(body)]
    whole = b"".join(events)
    without_usage = b"".join(e for e in events if b'"usage"' not in e)
    for cut in range(1, len(whole)):
        for wants_usage in (False, True):
            reader = StreamUsage(wants_usage)
            out = reader.feed(whole[:cut]) + reader.feed(whole[cut:]) + reader.flush()
            assert out == (whole if wants_usage else without_usage), f"split at {cut}"
            assert reader.usage is not None
            assert reader.usage["completion_tokens"] == 5


# --- the breaker ----------------------------------------------------------------------------------------


async def test_the_breaker_skips_a_failing_deployment_without_calling_it_and_returns_after_reset(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(
        deployment_breaker_threshold=3, deployment_breaker_reset_seconds=0.5, gateway_max_retries=0
    )
    upstream.always("500")
    for _ in range(3):
        assert (await chat(gateway)).status_code == 502
    assert gateway.health("primary").breaker.state is BreakerState.OPEN

    skipped = await chat(gateway)
    assert skipped.status_code == 503
    assert error_of(skipped)["code"] == "U1_upstream_unavailable"
    assert len(upstream.calls()) == 3, "an open breaker makes no call"

    upstream.always(None)
    await asyncio.sleep(0.55)
    back = await chat(gateway)
    assert back.status_code == 200, back.text
    assert len(upstream.calls()) == 4
    assert gateway.health("primary").breaker.state is BreakerState.CLOSED


async def test_a_half_open_probe_abandoned_by_its_client_does_not_shut_the_deployment_for_good(
    launch: Launch, upstream: OpenAIUpstream
) -> None:
    gateway = await launch(
        deployment_breaker_threshold=1, deployment_breaker_reset_seconds=0.3, gateway_max_retries=0
    )
    upstream.script("500", "hang:5")
    assert (await chat(gateway)).status_code == 502
    await asyncio.sleep(0.35)
    assert gateway.health("primary").breaker.state is BreakerState.HALF_OPEN
    # The probe: the client gives up while the upstream hangs (in process, that cancels the request).
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await gateway.http.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": HELLO},
                headers={"Authorization": f"Bearer {gateway.key}"},
            )
    after = await chat(gateway)
    assert after.status_code == 200, after.text
    assert len(upstream.calls()) == 3


# --- a client going away --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_conversation_turn_streams_as_the_upstream_sends_and_a_client_leaving_cancels_it(
    served: Served,
) -> None:
    """POST /api/v1/chat with stream: true passes the upstream's tokens on as they come: the first delta
    arrives while the upstream (one event every 0.1 s, for up to 30 s) is still sending, and a client that
    leaves then cancels the upstream request."""
    served.upstream.script("slow:0.1")
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.base_url, timeout=10) as http:
        body = {"model": MODEL, "message": "hello there", "stream": True}
        with http.stream("POST", "/api/v1/chat", json=body, headers=headers) as response:
            assert response.status_code == 200
            first = next(response.iter_raw())
            assert first.startswith(b"event: delta\n")
            assert not served.upstream.disconnected.is_set()  # the upstream is still streaming
        assert served.upstream.disconnected.wait(5), "the upstream request outlived its client"
        # Nothing of the unfinished turn was stored.
        listed = http.get("/api/v1/conversations", headers=headers).json()["data"]["items"]
        (conversation,) = [c for c in listed if c["title"].startswith("hello there")]
        got = http.get(f"/api/v1/conversations/{conversation['id']}", headers=headers).json()
        assert got["data"]["messages"]["items"] == []


@pytest.mark.slow
def test_a_client_disconnecting_from_a_slow_stream_cancels_the_upstream_request(served: Served) -> None:
    served.upstream.script("slow:0.1")
    body = {"model": MODEL, "messages": HELLO, "stream": True}
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.base_url, timeout=10) as http:
        with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200
            first = next(response.iter_raw())
            assert first.startswith(b"data: ")
            left_at = time.monotonic()
        # Leaving the block closes the connection mid-stream.
        assert served.upstream.disconnected.wait(5), "the upstream request outlived its client"
        noticed = time.monotonic() - left_at
    assert noticed < 3
    assert served.upstream.disconnected_after is not None
    assert served.upstream.disconnected_after < 5

    # The server is none the worse: the next request is answered.
    with httpx.Client(base_url=served.base_url, timeout=10) as http:
        again = http.post("/v1/chat/completions", json={**body, "stream": False}, headers=headers)
    assert again.status_code == 200, again.text
