"""A real uvicorn server in the test's event loop, serving the test's app, and a real WebSocket client.

The app runs with its lifespan (``app`` fixture), so a test can reach its services (accounts, the bus, the
hub) directly; every client talks to it over loopback TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from aiguardian.app import create_app
from aiguardian.settings import Settings
from tests.conftest import async_pg_url, make_settings, truncate_all
from tests.server import free_port

# No test waits on these; they only stop a broken test from hanging.
GUARD_SECONDS = 15.0
# Small, so the tests of a missing credential do not wait long.
AUTH_TIMEOUT = 0.5


@dataclass
class Live:
    app: FastAPI
    base_url: str
    ws_url: str

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=GUARD_SECONDS)


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[Live]:
    """Serve ``app`` (already started) on a free loopback port until the block ends."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_config=None,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve())
    async with asyncio.timeout(GUARD_SECONDS):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield Live(app, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Live]:
    """A fresh app with its own settings, started and served."""
    application = create_app(settings)
    async with (
        LifespanManager(application, startup_timeout=30, shutdown_timeout=30),
        serving(application) as live,
    ):
        yield live


@pytest.fixture
async def settings(tmp_path: Path, backend: str, pg_url: str | None) -> Settings:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    return make_settings(tmp_path, backend, pg_url, realtime_auth_timeout_seconds=AUTH_TIMEOUT)


@pytest.fixture
async def live(app: FastAPI) -> AsyncIterator[Live]:
    async with serving(app) as running_live:
        yield running_live


# -- the client side --------------------------------------------------------------------------------------------


async def open_socket(
    live: Live | str,
    *,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    topics: list[str] | None = None,
    path: str = "/api/v1/ws",
) -> ClientConnection:
    """Connect to ``live`` (or a ``ws://host:port`` base), authenticate (by header, or by a first `auth`
    message with ``token``), subscribe."""
    base = live.ws_url if isinstance(live, Live) else live
    ws = await connect(base + path, additional_headers=headers or {}, proxy=None)
    if token is not None:
        await ws.send(json.dumps({"type": "auth", "token": token}))
    ready = await next_message(ws)
    assert ready["type"] == "ready", ready
    if topics:
        await ws.send(json.dumps({"type": "subscribe", "topics": topics, "id": "sub"}))
        answer = await next_message(ws)
        assert answer == {"type": "subscribed", "id": "sub", "topics": sorted(topics)}, answer
    return ws


def bearer(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def next_message(ws: ClientConnection) -> dict[str, Any]:
    """The next message that is not a server ping."""
    async with asyncio.timeout(GUARD_SECONDS):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] != "ping":
                return message


async def events_until(ws: ClientConnection, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Every event received up to and including the first for which ``last`` is true."""
    got: list[dict[str, Any]] = []
    while True:
        message = await next_message(ws)
        assert message["type"] == "event", message
        got.append(message)
        if last(message):
            return got


def trace_is(trace_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["topic"] == "request.completed" and m["data"]["trace_id"] == trace_id


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(GUARD_SECONDS):
            while True:
                await ws.recv()
    received = closed.value.rcvd
    assert received is not None, f"closed without a close frame: {closed.value}"
    return received.code, received.reason
