"""The gateway: pick a deployment, call its provider with retries and fallbacks, account for the call in
the deployment's health, and keep answers in the answer cache when asked to (gateway/cache.py)."""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import structlog

from aiguardian.core.breaker import CircuitOpenError
from aiguardian.core.errors import NotFound, ReasonCode, UpstreamFailed
from aiguardian.gateway.cache import NO_CACHE, AnswerCache, CachedAnswer, CachePlan, assemble
from aiguardian.gateway.deployments import Deployment
from aiguardian.gateway.providers.base import Provider, UpstreamError
from aiguardian.gateway.router import Router

T = TypeVar("T")

log = structlog.get_logger("aiguardian.gateway")


@dataclass
class Outcome:
    deployment: Deployment
    attempts: int
    upstream_ms: float
    body: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


def _retry_after(seconds: float | None) -> dict[str, str]:
    # Whole seconds, rounded up: "Retry-After: 0" would invite the client straight back.
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}


def _failure(
    error: UpstreamError | None, model: str, rate_limited_for: float | None = None
) -> UpstreamFailed:
    if error is None:
        if rate_limited_for is not None:  # nothing tried: the provider asked us to wait
            return UpstreamFailed(
                f"the provider is rate limiting {model}; retry later",
                status_code=429,
                reason_code=ReasonCode.UPSTREAM_RATE_LIMITED,
                headers=_retry_after(rate_limited_for),
            )
        return UpstreamFailed(f"no deployment of {model} is available right now", status_code=503)
    if error.status == 429:
        return UpstreamFailed(
            f"the provider is rate limiting: {error.message}",
            status_code=429,
            reason_code=ReasonCode.UPSTREAM_RATE_LIMITED,
            headers=_retry_after(error.retry_after),
        )
    if error.status == 504:
        return UpstreamFailed(error.message, status_code=504, reason_code=ReasonCode.UPSTREAM_TIMEOUT)
    if error.status in (401, 403, 407):
        # The provider refused the gateway's own credentials: passed on as 401/403, every SDK would tell
        # the caller that *their* key is wrong.
        return UpstreamFailed(f"the provider refused this deployment's credentials ({error.status})")
    if not error.retryable and 400 <= error.status < 500:
        return UpstreamFailed(
            error.message, status_code=error.status, reason_code=ReasonCode.UPSTREAM_REJECTED
        )
    return UpstreamFailed(f"the provider failed: {error.message}", status_code=502)


def _scrub(error: UpstreamError, deployment: Deployment) -> UpstreamError:
    """Some upstreams quote the key they were sent in their error message; it goes no further."""
    if deployment.api_key and deployment.api_key in error.message:
        error.message = error.message.replace(deployment.api_key, "[redacted]")
    return error


class Gateway:
    def __init__(
        self,
        router: Router,
        providers: dict[str, Provider],
        *,
        max_retries: int,
        backoff_seconds: float,
        answers: AnswerCache | None = None,
    ) -> None:
        self.router = router
        self.providers = providers
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.answers = answers

    def require_model(self, model: str) -> None:
        """Raise the gateway's "no such model" before any accounting is done for the call."""
        if not self.router.knows(model):
            raise NotFound(f"the model `{model}` does not exist", reason_code=ReasonCode.MODEL_NOT_FOUND)

    def _plan(self, model: str) -> list[Deployment]:
        self.require_model(model)
        return self.router.plan(model)

    async def _attempts(self, model: str) -> AsyncIterator[tuple[int, Deployment]]:
        """Yield (attempt number, deployment) until the caller stops; at most ``max_retries + 1`` tries,
        moving to the next deployment after each failure, skipping deployments whose breaker is open."""
        plan = self._plan(model)
        if not plan:
            return
        attempt = 0
        index = 0
        while attempt <= self.max_retries and index < len(plan) * (self.max_retries + 1):
            deployment = plan[index % len(plan)]
            index += 1
            breaker = self.router.health[deployment.id].breaker
            try:
                breaker.before_call()
            except CircuitOpenError:
                continue
            if attempt:
                await asyncio.sleep(min(self.backoff_seconds * (2 ** (attempt - 1)), 5.0))
            attempt += 1
            yield attempt, deployment

    def _failed(self, deployment: Deployment, error: UpstreamError, latency_ms: float) -> None:
        _scrub(error, deployment)
        health = self.router.health[deployment.id]
        health.observe(False, latency_ms)
        health.last_error = f"{error.status}: {error.message}"[:300]
        if error.status == 429 and error.retry_after:
            health.breaker.open_for(error.retry_after, "429 rate limited by the provider")
            health.rate_limited_until = time.monotonic() + error.retry_after
        elif error.retryable:
            health.breaker.record_failure(health.last_error)
        else:
            health.breaker.release_probe()
        log.warning(
            "upstream call failed",
            deployment=deployment.id,
            status=error.status,
            retryable=error.retryable,
            error=error.message[:200],
        )

    def _succeeded(self, deployment: Deployment, latency_ms: float) -> None:
        health = self.router.health[deployment.id]
        health.observe(True, latency_ms)
        health.breaker.record_success()
        health.rate_limited_until = None

    def _abandoned(self, deployment: Deployment) -> None:
        """The call ended without an answer from the provider (cancelled, or a bug of ours): if it was
        the breaker's one half-open probe, let the next request probe instead of none ever again."""
        health = self.router.health.get(deployment.id)
        if health is not None:
            health.breaker.release_probe()

    def _rate_limited_for(self, model: str) -> float | None:
        """Seconds until the soonest deployment of ``model`` (or its fallbacks) that the provider told to
        wait may be tried again; None when none is waiting on a rate limit."""
        now = time.monotonic()
        waits = [
            until - now
            for d in self.router.plan(model)
            if (until := self.router.health[d.id].rate_limited_until) is not None and until > now
        ]
        return min(waits) if waits else None

    # -- the answer cache --------------------------------------------------------------------------------

    def cache_plan(
        self, payload: dict[str, Any], *, user_id: str, asked: str | None, cache_control: str | None
    ) -> CachePlan:
        if self.answers is None:
            return NO_CACHE
        default = self.router.caches(payload["model"])
        return self.answers.plan(
            payload, user_id=user_id, default=default, asked=asked, cache_control=cache_control
        )

    async def cached(self, plan: CachePlan) -> CachedAnswer | None:
        return None if self.answers is None else await self.answers.get(plan)

    async def remember_stream(
        self, plan: CachePlan, model: str, outcome: Outcome, chunks: list[bytes], usage: dict[str, Any] | None
    ) -> None:
        """Store a stream that ended well as the answer it amounts to."""
        if self.answers is not None and plan.store:
            await self.answers.put(plan, assemble(chunks, usage), outcome.deployment, model)

    # -- calls --------------------------------------------------------------------------------------------

    async def chat(self, payload: dict[str, Any], plan: CachePlan = NO_CACHE) -> Outcome:
        outcome = await self._call(payload, "chat")
        if self.answers is not None and plan.store:
            await self.answers.put(plan, outcome.body, outcome.deployment, payload["model"])
        return outcome

    async def embeddings(self, payload: dict[str, Any]) -> Outcome:
        return await self._call(payload, "embeddings")

    async def _call(self, payload: dict[str, Any], kind: str) -> Outcome:
        model = payload["model"]

        async def call(deployment: Deployment) -> dict[str, Any]:
            provider = self.providers[deployment.provider]
            if kind == "chat":
                return await provider.chat(deployment, payload)
            return await provider.embeddings(deployment, payload)

        deployment, attempts, upstream_ms, body = await self._first_success(model, call)
        body["model"] = model
        usage = body.get("usage")
        return Outcome(deployment, attempts, upstream_ms, body, usage if isinstance(usage, dict) else None)

    async def open_stream(self, payload: dict[str, Any]) -> tuple[Outcome, bytes, UpstreamStream]:
        """Start a stream: retries and fallbacks apply until the first chunk arrives; after that the chunks
        are passed on as they come and a failure ends the stream with an error event. How the stream ends,
        not its first chunk, is what the deployment's health and breaker record (see ``UpstreamStream``)."""
        model = payload["model"]

        async def start(deployment: Deployment) -> tuple[bytes, AsyncGenerator[bytes]]:
            upstream: AsyncGenerator[bytes] = self.providers[deployment.provider].stream_chat(
                deployment, payload
            )  # type: ignore[assignment]
            stream = whole_events(upstream, deployment.upstream_model, model)
            try:
                return await stream.__anext__(), stream
            except StopAsyncIteration:
                raise UpstreamError(
                    502, "the upstream ended the stream before any event", retryable=True
                ) from None

        deployment, attempts, upstream_ms, (first, stream) = await self._first_success(
            model, start, settled=False
        )
        watched = UpstreamStream(self, deployment, stream, upstream_ms)
        return Outcome(deployment, attempts, upstream_ms), first, watched

    async def _first_success(
        self, model: str, call: Callable[[Deployment], Awaitable[T]], *, settled: bool = True
    ) -> tuple[Deployment, int, float, T]:
        """Try the model's plan until one call succeeds: (deployment, attempts, upstream ms, result).
        Each outcome feeds the deployment's health; a non-retryable failure ends the tries at once. With
        ``settled=False`` the success is left for the caller to record (a stream, when it ends)."""
        last: UpstreamError | None = None
        spent = 0.0
        async for attempts, deployment in self._attempts(model):
            started = time.perf_counter()
            try:
                result = await call(deployment)
            except UpstreamError as error:
                took = (time.perf_counter() - started) * 1000
                spent += took
                self._failed(deployment, error, took)
                last = error
                if not error.retryable:
                    break
                continue
            except BaseException:
                self._abandoned(deployment)
                raise
            took = (time.perf_counter() - started) * 1000
            if settled:
                self._succeeded(deployment, took)
            return deployment, attempts, spent + took, result
        raise _failure(last, model, self._rate_limited_for(model) if last is None else None)


class UpstreamStream:
    """The rest of a stream after its first event, as the provider sends it. Its end settles the call in
    the deployment's health: the stream finishing (or the client leaving) is a success, a break after the
    first chunk a failure that counts against the breaker like a failed call. Until then the breaker's
    half-open probe, if this is one, stays taken. Closing it more than once is harmless."""

    def __init__(
        self, gateway: Gateway, deployment: Deployment, events: AsyncGenerator[bytes], opened_ms: float
    ) -> None:
        self._gateway = gateway
        self._deployment = deployment
        self._events = events
        self._opened_ms = opened_ms
        self._ended = False

    def __aiter__(self) -> UpstreamStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            self._end(None)
            raise
        except UpstreamError as error:
            self._end(error)
            raise
        except Exception:  # a bug of ours says nothing about the deployment
            self._end(None, abandoned=True)
            raise

    def _end(self, error: UpstreamError | None, *, abandoned: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        if self._deployment.id not in self._gateway.router.health:  # removed meanwhile
            return
        if abandoned:
            self._gateway._abandoned(self._deployment)
        elif error is None:
            self._gateway._succeeded(self._deployment, self._opened_ms)
        else:
            self._gateway._failed(self._deployment, error, self._opened_ms)

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._end(None)


# An SSE event ends with a blank line; lines end with LF, CRLF or CR.
_EVENT_END = re.compile(rb"(\r\n\r\n|\n\n|\r\r)")


def _events_end(data: bytes) -> int:
    """Where the last whole event in ``data`` ends (0: no event is whole yet)."""
    end = 0
    for separator in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        at = data.rfind(separator)
        if at >= 0:
            end = max(end, at + len(separator))
    return end


async def whole_events(
    stream: AsyncGenerator[bytes], upstream_model: str, model: str
) -> AsyncGenerator[bytes]:
    """The provider's bytes regrouped into whole SSE events (the network splits them anywhere), each
    naming the model the client asked for, as non-streamed answers do, rather than the provider's name."""
    rename = None
    if upstream_model != model:
        pattern = re.compile(rb'("model"\s*:\s*)' + re.escape(orjson.dumps(upstream_model)))
        name = orjson.dumps(model)
        rename = functools.partial(pattern.sub, lambda m: m.group(1) + name)
    pending = b""
    try:
        async for chunk in stream:
            data = pending + chunk if pending else chunk
            end = _events_end(data)
            whole, pending = data[:end], data[end:]
            if whole:
                yield rename(whole) if rename else whole
        if pending:  # a last event without its blank line
            yield rename(pending) if rename else pending
    finally:
        await stream.aclose()


class StreamUsage:
    """Reads usage from the SSE events going by, and drops the usage-only chunk when the client did not ask
    for it (an empty ``choices`` list would trip clients that index ``choices[0]``).

    Chunks from the network split events anywhere (inside ``"usage"`` too), so only whole events are passed
    on; the unfinished tail of a chunk waits for the next one."""

    def __init__(self, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: dict[str, Any] | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        end = _events_end(data)
        whole, self._pending = data[:end], data[end:]
        if b'"usage"' not in whole:
            return whole
        kept = []
        parts = _EVENT_END.split(whole)  # event, separator, event, separator, ..., ""
        for event, separator in zip(parts[::2], parts[1::2], strict=False):
            if b'"usage"' in event and event.startswith(b"data:"):
                try:
                    parsed = orjson.loads(event[5:])
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
                    self.usage = parsed["usage"]
                    if not parsed.get("choices") and not self.client_wants_usage:
                        continue
            kept.append(event + separator)
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest
