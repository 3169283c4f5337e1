"""The HTTP side every provider shares: one pooled aiohttp session per upstream base URL, POSTs with the
deployment's timeout, and transport failures turned into retryable ``UpstreamError``s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import orjson

from aiguardian.gateway.deployments import Deployment
from aiguardian.gateway.providers.base import UpstreamError

ErrorReader = Callable[[aiohttp.ClientResponse], Awaitable[UpstreamError]]


@contextlib.contextmanager
def _transport_errors() -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise UpstreamError(504, "the upstream did not answer in time", retryable=True) from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            502, f"upstream connection failed: {type(exc).__name__}", retryable=True
        ) from None


def json_object(raw: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UpstreamError(502, "the upstream answered malformed JSON", retryable=True) from None
    if not isinstance(parsed, dict):
        raise UpstreamError(502, "the upstream answered an unexpected shape", retryable=True)
    return parsed


class UpstreamHTTP:
    def __init__(self, read_error: ErrorReader) -> None:
        self._read_error = read_error
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, base_url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base_url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            session = aiohttp.ClientSession(connector=connector, auto_decompress=True)
            self._sessions[base_url] = session
        return session

    async def post(self, deployment: Deployment, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        """The whole answer body; an HTTP error status raises the provider's ``UpstreamError``."""
        timeout = aiohttp.ClientTimeout(total=deployment.timeout)
        with _transport_errors():
            async with self._session(deployment.base_url).post(
                deployment.base_url + path, data=body, headers=headers, timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise await self._read_error(response)
                return await response.read()

    async def stream(
        self, deployment: Deployment, path: str, body: bytes, headers: dict[str, str]
    ) -> AsyncGenerator[bytes]:
        """The answer body as it arrives; the timeout bounds connecting and each wait between reads."""
        timeout = aiohttp.ClientTimeout(total=None, connect=deployment.timeout, sock_read=deployment.timeout)
        with _transport_errors():
            async with self._session(deployment.base_url).post(
                deployment.base_url + path, data=body, headers=headers, timeout=timeout
            ) as response:
                if response.status >= 400:
                    raise await self._read_error(response)
                async for chunk in response.content.iter_any():
                    yield chunk

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
