"""Gateway fixtures: the fake OpenAI upstream on loopback, apps whose deployments point at it, SDK clients.

In-process apps run under ``LifespanManager`` with the ``openai`` SDK talking through ``ASGITransport``
(on SQLite, and on PostgreSQL + Redis when the suite has them). The sync SDK client and the disconnecting
client need a real socket, so one ``aiguardian serve`` subprocess serves them, calling a fake upstream that
runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from argon2 import PasswordHasher
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from aiguardian.app import create_app
from aiguardian.gateway.router import DeploymentHealth
from aiguardian.identity import passwords
from tests.conftest import async_pg_url, make_settings, truncate_all
from tests.fakes.openai_upstream import OpenAIUpstream
from tests.server import ServerProcess

# The provider key the deployments read through ``api_key_env``. Deliberately not shaped like an OpenAI
# key, so the log redaction of ``sk-...`` cannot hide a leak from the tests that look for it.
PROVIDER_KEY_ENV = "FAKE_PROVIDER_API_KEY"
MODEL = "gpt-fake"
UPSTREAM_MODEL = "gpt-fake-upstream"
REQUEST_BOUND_SECONDS = 10.0  # proves nothing hangs; says nothing about speed


class BoundedASGITransport(httpx.ASGITransport):
    """``ASGITransport`` enforces no timeout (there is no socket): a gateway that hangs would hang the test.
    This one fails the request instead. It reads the whole response, so the bound covers streams too."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with asyncio.timeout(REQUEST_BOUND_SECONDS):
            return await super().handle_async_request(request)


def deployment(upstream: OpenAIUpstream, **fields: Any) -> dict[str, Any]:
    """A ``deployments:`` entry served by the fake upstream (``model`` gpt-fake unless given)."""
    spec: dict[str, Any] = {
        "id": "primary",
        "model": MODEL,
        "provider": "openai",
        "base_url": upstream.base_url,
        "upstream_model": UPSTREAM_MODEL,
        "timeout": 5.0,
    }
    spec.update(fields)
    return spec


@dataclass
class GatewayApp:
    """A running in-process app, a member's API key with the ``chat`` scope, and ways to call it."""

    app: FastAPI
    key: str
    user_id: str
    http: httpx.AsyncClient

    def sdk(self, api_key: str | None = None) -> openai.AsyncOpenAI:
        # max_retries=0: the SDK's own retries would hide what the gateway did.
        return openai.AsyncOpenAI(
            base_url="http://testserver/v1",
            api_key=api_key or self.key,
            http_client=self.http,  # type: ignore[arg-type]  # the SDK accepts httpx clients too
            max_retries=0,
        )

    def health(self, deployment_id: str) -> DeploymentHealth:
        return self.app.state.gateway.router.health[deployment_id]  # type: ignore[no-any-return]

    async def key_with(self, scopes: list[str]) -> str:
        _, secret = await self.app.state.identity.create_key(
            self.user_id, f"k-{uuid.uuid4().hex[:6]}", scopes
        )
        return str(secret)


Launch = Callable[..., Awaitable[GatewayApp]]


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIUpstream]:
    async with OpenAIUpstream(models=(UPSTREAM_MODEL,)) as fake:
        yield fake


# Argon2 at its cheapest: these tests make accounts but are not about passwords, and each hash at the real
# cost takes a quarter of a second.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def cheap_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "_hasher", CHEAP_HASHER)


async def make_member(app: FastAPI, scopes: list[str]) -> tuple[str, str]:
    """A member and an API key of theirs with ``scopes``: (user id, key)."""
    email = f"member-{uuid.uuid4().hex[:8]}@example.test"
    user = await app.state.identity.create_user(email, f"pw-{uuid.uuid4().hex}", role="member")
    _, key = await app.state.identity.create_key(user.id, "gateway-tests", scopes)
    return str(user.id), str(key)


@pytest.fixture
async def launch(
    tmp_path: Path, backend: str, pg_url: str | None, upstream: OpenAIUpstream, cheap_passwords: None
) -> AsyncIterator[Launch]:
    """``await launch(*deployments, fallbacks=..., **settings)``: start an app (default: one deployment of
    gpt-fake on the fake upstream, backoff 10 ms); stopped after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            *deployments: dict[str, Any], fallbacks: dict[str, list[str]] | None = None, **overrides: Any
        ) -> GatewayApp:
            if backend == "postgres":
                assert pg_url is not None
                await truncate_all(async_pg_url(pg_url))
            values: dict[str, Any] = {"gateway_retry_backoff_seconds": 0.01, **overrides}
            settings = make_settings(
                tmp_path / uuid.uuid4().hex[:8],
                backend,
                pg_url,
                deployments=list(deployments) or [deployment(upstream)],
                fallbacks=fallbacks or {},
                **values,
            )
            app = create_app(settings)
            await stack.enter_async_context(LifespanManager(app, startup_timeout=30, shutdown_timeout=30))
            user_id, key = await make_member(app, ["chat", "read"])
            transport = BoundedASGITransport(app=app, client=("127.0.0.1", 50000))
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            return GatewayApp(app, key, user_id, http)

        yield start


# --- one real server process for the tests that need a socket -------------------------------------------


@dataclass
class Served:
    server: ServerProcess
    upstream: OpenAIUpstream
    key: str
    provider_key: str

    @property
    def base_url(self) -> str:
        return self.server.base_url


async def _make_key(data_dir: Path) -> str:
    settings = make_settings(data_dir.parent, "sqlite", None)
    assert settings.data_dir == data_dir
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        _, key = await make_member(app, ["chat", "read"])
    return key


@pytest.fixture(scope="session")
def served_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("gateway-server")
    data_dir = root / "data"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "_hasher", CHEAP_HASHER)
        key = asyncio.run(_make_key(data_dir))
    provider_key = f"prov-{uuid.uuid4().hex}"
    with OpenAIUpstream(models=(UPSTREAM_MODEL,)).in_thread() as fake:
        config = root / "aiguardian.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "deployments": [deployment(fake, api_key_env=PROVIDER_KEY_ENV)],
                    "gateway_retry_backoff_seconds": 0.01,
                }
            )
        )
        env = {
            "AIG_CONFIG_FILE": str(config),
            "AIG_DATA_DIR": str(data_dir),
            PROVIDER_KEY_ENV: provider_key,
        }
        server = ServerProcess(root, env=env).start()
        try:
            server.wait_healthy(30)
            yield Served(server, fake, key, provider_key)
        finally:
            server.stop()


@pytest.fixture
def served(served_session: Served) -> Served:
    """The shared server process, its fake upstream reset for this test."""
    served_session.upstream.reset()
    return served_session
