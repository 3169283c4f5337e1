"""The gateway: pick a deployment, call its provider with retries and fallbacks, account for the call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from aiguardian.core.breaker import CircuitOpenError
from aiguardian.core.errors import NotFound, ReasonCode, UpstreamFailed
from aiguardian.gateway.deployments import Deployment
from aiguardian.gateway.providers.base import Provider, UpstreamError
from aiguardian.gateway.router import Router

log = structlog.get_logger("aiguardian.gateway")


@dataclass
class Outcome:
    deployment: Deployment
    attempts: int
    upstream_ms: float
    body: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None


def _failure(error: UpstreamError | None, model: str) -> UpstreamFailed:
    if error is None:
        return UpstreamFailed(f"no deployment of {model} is available right now", status_code=503)
    if error.status == 429:
        headers = {"Retry-After": str(int(error.retry_after or 1))}
        return UpstreamFailed(
            f"the provider is rate limiting: {error.message}",
            status_code=429,
            reason_code=ReasonCode.UPSTREAM_RATE_LIMITED,
            headers=headers,
        )
    if error.status == 504:
        return UpstreamFailed(error.message, status_code=504, reason_code=ReasonCode.UPSTREAM_TIMEOUT)
    if not error.retryable and 400 <= error.status < 500:
        return UpstreamFailed(
            error.message, status_code=error.status, reason_code=ReasonCode.UPSTREAM_REJECTED
        )
    return UpstreamFailed(f"the provider failed: {error.message}", status_code=502)


class Gateway:
    def __init__(
        self, router: Router, providers: dict[str, Provider], *, max_retries: int, backoff_seconds: float
    ) -> None:
        self.router = router
        self.providers = providers
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds

    def _plan(self, model: str) -> list[Deployment]:
        if not self.router.knows(model):
            raise NotFound(f"the model `{model}` does not exist", reason_code=ReasonCode.MODEL_NOT_FOUND)
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
        health = self.router.health[deployment.id]
        health.observe(False, latency_ms)
        health.last_error = f"{error.status}: {error.message}"[:300]
        if error.status == 429 and error.retry_after:
            health.breaker.open_for(error.retry_after, "429 rate limited by the provider")
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

    async def chat(self, payload: dict[str, Any]) -> Outcome:
        return await self._call(payload, "chat")

    async def embeddings(self, payload: dict[str, Any]) -> Outcome:
        return await self._call(payload, "embeddings")

    async def _call(self, payload: dict[str, Any], kind: str) -> Outcome:
        model = payload["model"]
        last: UpstreamError | None = None
        spent = 0.0
        attempts = 0
        async for attempts, deployment in self._attempts(model):
            provider = self.providers[deployment.provider]
            started = time.perf_counter()
            try:
                if kind == "chat":
                    body = await provider.chat(deployment, payload)
                else:
                    body = await provider.embeddings(deployment, payload)
            except UpstreamError as error:
                took = (time.perf_counter() - started) * 1000
                spent += took
                self._failed(deployment, error, took)
                last = error
                if not error.retryable:
                    break
                continue
            took = (time.perf_counter() - started) * 1000
            self._succeeded(deployment, took)
            body["model"] = model
            usage = body.get("usage")
            return Outcome(
                deployment, attempts, spent + took, body, usage if isinstance(usage, dict) else None
            )
        raise _failure(last, model)

    async def open_stream(self, payload: dict[str, Any]) -> tuple[Outcome, bytes, AsyncGenerator[bytes]]:
        """Start a stream: retries and fallbacks apply until the first chunk arrives; after that the chunks
        are passed on as they come and a failure ends the stream with an error event."""
        model = payload["model"]
        last: UpstreamError | None = None
        spent = 0.0
        async for attempts, deployment in self._attempts(model):
            stream: AsyncGenerator[bytes] = self.providers[deployment.provider].stream_chat(
                deployment, payload
            )  # type: ignore[assignment]
            started = time.perf_counter()
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = b""
            except UpstreamError as error:
                took = (time.perf_counter() - started) * 1000
                spent += took
                self._failed(deployment, error, took)
                last = error
                if not error.retryable:
                    break
                continue
            took = (time.perf_counter() - started) * 1000
            self._succeeded(deployment, took)
            return Outcome(deployment, attempts, spent + took), first, stream
        raise _failure(last, model)


class StreamUsage:
    """Reads usage from the SSE lines going by, and drops the usage-only chunk when the client did not ask
    for it (an empty ``choices`` list would trip clients that index ``choices[0]``)."""

    def __init__(self, client_wants_usage: bool) -> None:
        self.client_wants_usage = client_wants_usage
        self.usage: dict[str, Any] | None = None
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if b'"usage"' not in chunk and not self._pending:
            return chunk
        data = self._pending + chunk
        events = data.split(b"\n\n")
        self._pending = events.pop()  # an incomplete event waits for the next chunk
        kept = []
        for event in events:
            if b'"usage"' in event and event.startswith(b"data: {"):
                try:
                    parsed = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    parsed = None
                if isinstance(parsed, dict) and isinstance(parsed.get("usage"), dict):
                    self.usage = parsed["usage"]
                    if not parsed.get("choices") and not self.client_wants_usage:
                        continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest
