"""Any OpenAI-compatible upstream: OpenAI, Azure OpenAI, Ollama, vLLM, llama.cpp, LM Studio, Groq, ...

aiohttp rather than httpx: on this hot path it needs fewer CPU cycles per request (``bench/gateway``
measures both clients against the mock upstream). One pooled session per base URL.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from aiguardian.gateway.deployments import Deployment
from aiguardian.gateway.providers.base import RETRYABLE_STATUSES, UpstreamError, parse_retry_after
from aiguardian.gateway.providers.http import UpstreamHTTP, json_object


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
        self._http = UpstreamHTTP(error_from_response)

    async def _post_json(self, deployment: Deployment, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps({**payload, "model": deployment.upstream_model})
        return json_object(await self._http.post(deployment, path, body, _headers(deployment)))

    async def chat(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json(deployment, "/chat/completions", payload)

    async def embeddings(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json(deployment, "/embeddings", payload)

    async def stream_chat(self, deployment: Deployment, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        body = orjson.dumps({**payload, "model": deployment.upstream_model})
        async with contextlib.aclosing(
            self._http.stream(deployment, "/chat/completions", body, _headers(deployment))
        ) as chunks:
            async for chunk in chunks:
                yield chunk

    async def close(self) -> None:
        await self._http.close()
