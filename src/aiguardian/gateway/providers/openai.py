"""Any OpenAI-compatible upstream: OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp, LM Studio, Groq, ...

aiohttp rather than httpx: on this hot path it needs fewer CPU cycles per request (``bench/gateway``
measures both clients against the mock upstream). One pooled session per base URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from aiguardian.gateway.deployments import Deployment
from aiguardian.gateway.providers.base import RETRYABLE_STATUSES, UpstreamError, parse_retry_after


def _headers(deployment: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if deployment.api_key:
        headers["Authorization"] = f"Bearer {deployment.api_key}"
    return headers


async def error_from_response(response: aiohttp.ClientResponse) -> UpstreamError:
    raw = await response.read()
    message = f"upstream answered {response.status}"
    try:
        detail = orjson.loads(raw).get("error")
        if isinstance(detail, dict) and detail.get("message"):
            message = str(detail["message"])[:500]
        elif isinstance(detail, str):
            message = detail[:500]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return UpstreamError(
        response.status,
        message,
        retryable=response.status in RETRYABLE_STATUSES,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


class OpenAIProvider:
    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, base_url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base_url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
            self._sessions[base_url] = session
        return session

    async def _post_json(self, deployment: Deployment, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps({**payload, "model": deployment.upstream_model})
        timeout = aiohttp.ClientTimeout(total=deployment.timeout)
        try:
            async with self._session(deployment.base_url).post(
                deployment.base_url + path, data=body, headers=_headers(deployment), timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise await error_from_response(response)
                raw = await response.read()
        except TimeoutError:
            raise UpstreamError(504, "the upstream did not answer in time", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                502, f"upstream connection failed: {type(exc).__name__}", retryable=True
            ) from None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(502, "the upstream answered malformed JSON", retryable=True) from None
        if not isinstance(parsed, dict):
            raise UpstreamError(502, "the upstream answered an unexpected shape", retryable=True)
        return parsed

    async def chat(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json(deployment, "/chat/completions", payload)

    async def embeddings(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json(deployment, "/embeddings", payload)

    async def stream_chat(self, deployment: Deployment, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        body = orjson.dumps({**payload, "model": deployment.upstream_model})
        timeout = aiohttp.ClientTimeout(total=None, connect=deployment.timeout, sock_read=deployment.timeout)
        try:
            async with self._session(deployment.base_url).post(
                deployment.base_url + "/chat/completions",
                data=body,
                headers=_headers(deployment),
                timeout=timeout,
            ) as response:
                if response.status >= 400:
                    raise await error_from_response(response)
                async for chunk in response.content.iter_any():
                    yield chunk
        except TimeoutError:
            raise UpstreamError(504, "the upstream did not answer in time", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                502, f"upstream connection failed: {type(exc).__name__}", retryable=True
            ) from None

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
