"""Deployments managed through ``/api/v1/deployments``: CRUD and validation, drain and disable on the next
request, health in ``/api/v1/status`` (passive and the active probe), a change made through one process
applied by another, and the models an API key may use."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from aiguardian.app import create_app
from aiguardian.gateway.manage import HEALTH, DeploymentCreate
from aiguardian.settings import Settings
from tests.conftest import async_pg_url, make_settings, truncate_all
from tests.server import ServerProcess, free_port

CLOSED = "http://127.0.0.1:1/v1"  # nothing listens on port 1: every call fails at once
CHAT = {"messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def settings(tmp_path: Path, backend: str, pg_url: str | None) -> Settings:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    return make_settings(
        tmp_path,
        backend,
        pg_url,
        gateway_retry_backoff_seconds=0,
        gateway_max_retries=1,
        deployment_breaker_threshold=2,
        deployment_breaker_reset_seconds=60,
    )


def code_of(response: httpx.Response) -> str | None:
    error = response.json().get("error")
    return error.get("code") if isinstance(error, dict) else None


async def create(client: httpx.AsyncClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    body.setdefault("id", f"dep-{uuid.uuid4().hex[:6]}")
    response = await client.post("/api/v1/deployments", headers=headers, json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def chat(client: httpx.AsyncClient, headers: dict[str, str], model: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", headers=headers, json={"model": model, **CHAT})


async def test_admin_creates_lists_updates_and_deletes_a_deployment(
    client: httpx.AsyncClient, admin_headers: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_PROVIDER_KEY", "sk-never-shown-1234")
    made = await create(
        client,
        admin_headers,
        id="acme-1",
        model="acme-chat",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="ACME_PROVIDER_KEY",
        upstream_model="acme-large",
        weight=2,
        rpm=100,
    )
    assert made["source"] == "api"
    assert (made["api_key_env"], made["api_key_set"]) == ("ACME_PROVIDER_KEY", True)
    assert (made["model"], made["upstream_model"], made["weight"], made["rpm"]) == (
        "acme-chat",
        "acme-large",
        2,
        100,
    )
    assert (made["enabled"], made["draining"], made["state"]) == (True, False, "healthy")
    assert made["health"]["breaker"] == "closed"

    listed = await client.get("/api/v1/deployments", headers=admin_headers)
    assert listed.status_code == 200
    assert "sk-never-shown-1234" not in listed.text
    sources = {d["id"]: d["source"] for d in listed.json()["data"]}
    assert sources == {"demo": "config", "acme-1": "api"}
    only = await client.get("/api/v1/deployments", headers=admin_headers, params={"model": "acme-chat"})
    assert [d["id"] for d in only.json()["data"]] == ["acme-1"]

    patched = await client.patch(
        "/api/v1/deployments/acme-1", headers=admin_headers, json={"weight": 5, "rpm": None, "priority": 3}
    )
    assert patched.status_code == 200, patched.text
    data = patched.json()["data"]
    assert (data["weight"], data["rpm"], data["priority"], data["upstream_model"]) == (
        5,
        None,
        3,
        "acme-large",
    )
    assert data["updated_at"] >= data["created_at"]
    fetched = await client.get("/api/v1/deployments/acme-1", headers=admin_headers)
    assert fetched.json()["data"]["weight"] == 5

    deleted = await client.delete("/api/v1/deployments/acme-1", headers=admin_headers)
    assert deleted.status_code == 200
    gone = await client.get("/api/v1/deployments/acme-1", headers=admin_headers)
    assert (gone.status_code, code_of(gone)) == (404, "E2_not_found")
    again = await client.delete("/api/v1/deployments/acme-1", headers=admin_headers)
    assert again.status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "m", "weight": 0}, "body.weight"),
        ({"model": "", "provider": "demo"}, "body.model"),
        ({"model": "m", "provider": "nope"}, "body.provider"),
        ({"model": "m", "base_url": "not a url"}, "body.base_url"),
        ({"model": "m", "timeout": -1}, "body.timeout"),
        ({"model": "m", "api_key_env": "sk-live-key"}, "body.api_key_env"),
        ({"model": "m", "id": "../x"}, "body.id"),
        ({"model": "m", "api_key": "sk-inline"}, "body.api_key"),
        ({"model": "m", "api_key_env": "AIG_SECRET_KEY"}, "body.api_key_env"),
    ],
)
async def test_invalid_deployments_are_refused_naming_the_field(
    client: httpx.AsyncClient, admin_headers: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/deployments", headers=admin_headers, json=body)
    assert (response.status_code, code_of(response)) == (422, "E1_validation_error"), response.text
    assert response.json()["error"]["details"][0]["field"] == field
    listed = await client.get("/api/v1/deployments", headers=admin_headers)
    assert [d["id"] for d in listed.json()["data"]] == ["demo"]


async def test_updates_are_validated_and_config_deployments_are_read_only(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create(client, admin_headers, id="patch-me", model="m", provider="demo")
    for body, field in (
        ({"weight": None}, "body.weight"),
        ({"priority": 101}, "body.priority"),
        ({"id": "x"}, "body.id"),
    ):
        response = await client.patch("/api/v1/deployments/patch-me", headers=admin_headers, json=body)
        assert (response.status_code, response.json()["error"]["details"][0]["field"]) == (422, field)
    duplicate = await client.post(
        "/api/v1/deployments", headers=admin_headers, json={"id": "patch-me", "model": "m"}
    )
    assert (duplicate.status_code, code_of(duplicate)) == (409, "E2_conflict")
    shadow = await client.post(
        "/api/v1/deployments", headers=admin_headers, json={"id": "demo", "model": "m"}
    )
    assert shadow.status_code == 409
    for method, path in (
        ("PATCH", "/api/v1/deployments/demo"),
        ("POST", "/api/v1/deployments/demo/drain"),
        ("POST", "/api/v1/deployments/demo/disable"),
        ("DELETE", "/api/v1/deployments/demo"),
    ):
        response = await client.request(
            method, path, headers=admin_headers, json={"weight": 2} if method == "PATCH" else None
        )
        assert (response.status_code, code_of(response)) == (409, "E2_conflict"), (method, path)
    demo = await client.get("/api/v1/deployments/demo", headers=admin_headers)
    assert (demo.json()["data"]["enabled"], demo.json()["data"]["draining"]) == (True, False)


async def test_members_cannot_manage_deployments(
    client: httpx.AsyncClient, member: Any, admin_headers: dict[str, str]
) -> None:
    made = await create(client, admin_headers, model="m", provider="demo")
    for method, path in (
        ("GET", "/api/v1/deployments"),
        ("POST", "/api/v1/deployments"),
        ("GET", f"/api/v1/deployments/{made['id']}"),
        ("POST", f"/api/v1/deployments/{made['id']}/disable"),
        ("DELETE", f"/api/v1/deployments/{made['id']}"),
    ):
        body = {"model": "x", "provider": "demo"} if method == "POST" else None
        response = await client.request(method, path, headers=member.headers, json=body)
        assert (response.status_code, code_of(response)) == (403, "G2_forbidden"), (method, path)
    still = await client.get(f"/api/v1/deployments/{made['id']}", headers=admin_headers)
    assert still.json()["data"]["enabled"] is True
    listed = await client.get("/api/v1/deployments", headers=admin_headers)
    assert len(listed.json()["data"]) == 2


async def test_drain_and_disable_take_effect_on_the_next_request(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create(client, admin_headers, id="primary", model="routed", provider="demo", priority=0)
    await create(client, admin_headers, id="backup", model="routed", base_url=CLOSED, priority=1)

    served = await chat(client, admin_headers, "routed")
    assert served.status_code == 200, served.text
    assert served.headers["X-AIG-Deployment"] == "primary"

    drained = await client.post("/api/v1/deployments/primary/drain", headers=admin_headers)
    assert (drained.json()["data"]["draining"], drained.json()["data"]["state"]) == (True, "draining")
    refused = await chat(client, admin_headers, "routed")  # only the broken backup is left
    assert refused.status_code == 502, refused.text

    enabled = await client.post("/api/v1/deployments/primary/enable", headers=admin_headers)
    assert (enabled.json()["data"]["enabled"], enabled.json()["data"]["draining"]) == (True, False)
    back = await chat(client, admin_headers, "routed")
    assert (back.status_code, back.headers["X-AIG-Deployment"]) == (200, "primary")

    await client.post("/api/v1/deployments/primary/disable", headers=admin_headers)
    await client.post("/api/v1/deployments/backup/disable", headers=admin_headers)
    none_left = await chat(client, admin_headers, "routed")
    assert none_left.status_code == 503, none_left.text
    models = await client.get("/v1/models", headers=admin_headers)
    assert "routed" not in [m["id"] for m in models.json()["data"]]

    await client.post("/api/v1/deployments/primary/enable", headers=admin_headers)
    models = await client.get("/v1/models", headers=admin_headers)
    assert "routed" in [m["id"] for m in models.json()["data"]]


async def test_status_shows_deployment_health_after_failures(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    await create(client, admin_headers, id="broken", model="flaky", base_url=CLOSED)
    before = (await client.get("/api/v1/status")).json()["data"]["components"]["deployments"]
    assert before["state"] == "healthy"

    # One request, two attempts (max_retries=1): both fail, the breaker (threshold 2) opens.
    assert (await chat(client, admin_headers, "flaky")).status_code == 502
    assert (await chat(client, admin_headers, "flaky")).status_code == 503  # not even tried
    status = (await client.get("/api/v1/status")).json()["data"]
    component = status["components"]["deployments"]
    assert component["state"] == "degraded"  # the demo model still serves
    assert status["status"] == "degraded"
    rows = {row["id"]: row for row in component["detail"]["deployments"]}
    assert (rows["broken"]["state"], rows["broken"]["breaker"], rows["broken"]["error_rate"]) == (
        "unhealthy",
        "open",
        1.0,
    )
    assert rows["broken"]["requests"] == 2
    assert rows["demo"]["state"] == "healthy"
    assert "base_url" not in rows["broken"]
    assert "last_error" not in rows["broken"]

    detail = (await client.get("/api/v1/deployments/broken", headers=admin_headers)).json()["data"]
    assert detail["health"]["breaker"] == "open"
    assert "connection failed" in detail["health"]["last_error"]
    assert detail["health"]["latency_ms"] is not None

    # A change reloads the deployment but keeps its health.
    await client.patch("/api/v1/deployments/broken", headers=admin_headers, json={"weight": 4})
    detail = (await client.get("/api/v1/deployments/broken", headers=admin_headers)).json()["data"]
    assert (detail["weight"], detail["health"]["requests"], detail["health"]["breaker"]) == (4, 2, "open")

    drained = await client.post("/api/v1/deployments/broken/drain", headers=admin_headers)
    assert drained.json()["data"]["state"] == "draining"
    component = (await client.get("/api/v1/status")).json()["data"]["components"]["deployments"]
    assert component["state"] == "healthy"  # out of service: no longer counts
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert "deployments" not in ready.json()["components"]


@contextlib.asynccontextmanager
async def upstream(chat_status: int) -> AsyncIterator[str]:
    """A real HTTP upstream on loopback: ``/v1/models`` answers 200, chat answers ``chat_status``."""

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def completions(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "boom"}}, status=chat_status)

    application = web.Application()
    application.router.add_get("/v1/models", models)
    application.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(application)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


async def eventually(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_the_active_probe_feeds_the_breaker_and_publishes_state_changes(
    tmp_path: Path, backend: str, pg_url: str | None
) -> None:
    if backend == "postgres":
        assert pg_url is not None
        await truncate_all(async_pg_url(pg_url))
    settings = make_settings(
        tmp_path,
        backend,
        pg_url,
        deployment_probe_interval_seconds=0.05,
        deployment_breaker_threshold=2,
        deployment_breaker_reset_seconds=60,
        gateway_retry_backoff_seconds=0,
        gateway_max_retries=1,
    )
    application = create_app(settings)
    async with LifespanManager(application, startup_timeout=30, shutdown_timeout=30), upstream(500) as live:
        events: list[dict[str, Any]] = []
        application.state.runtime.bus.on(HEALTH, lambda _t, p: events.append(p))
        service = application.state.deployments
        await service.create(DeploymentCreate(id="dead", model="dead-model", base_url=CLOSED))
        await service.create(DeploymentCreate(id="alive", model="alive-model", base_url=live))
        health = application.state.gateway.router.health

        # No request was sent: the probe alone finds the closed port and opens the breaker.
        await eventually(lambda: health["dead"].breaker.state.value == "open")
        await eventually(lambda: any(e["id"] == "dead" and e["state"] == "unhealthy" for e in events))
        assert health["dead"].requests == 0
        assert service.get("dead").state == "unhealthy"

        # Requests fail (chat answers 500): the error rate shows it. The breaker is then held open for a
        # minute; the upstream still lists its models, so the next probe closes it long before that.
        identity = application.state.identity
        user = await identity.create_user("probe@example.test", "pw-" + uuid.uuid4().hex, role="admin")
        _, secret = await identity.create_key(user.id, "k", ["chat"])
        transport = httpx.ASGITransport(app=application, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            response = await http.post(
                "/v1/chat/completions", headers={"X-API-Key": secret}, json={"model": "alive-model", **CHAT}
            )
        assert response.status_code == 502, response.text
        assert health["alive"].failures == 2
        health["alive"].breaker.open_for(60, "held open by the test")
        assert service.get("alive").state == "unhealthy"
        await eventually(lambda: health["alive"].breaker.state.value == "closed")
        assert service.get("alive").state == "degraded"  # closed again, but its recent error rate is high


async def test_a_key_s_allowed_models_are_stored_and_reach_the_principal(
    app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    made = await client.post(
        "/api/v1/keys",
        headers=admin_headers,
        json={"name": "limited", "scopes": ["read", "write", "chat"], "models": ["b-model", "a-model"]},
    )
    assert made.status_code == 201, made.text
    data = made.json()["data"]
    assert data["models"] == ["a-model", "b-model"]
    principal = await app.state.identity.authenticate(data["key"])
    assert principal.models == frozenset({"a-model", "b-model"})
    assert principal.may_use("a-model")
    assert not principal.may_use("aiguardian-demo")
    again = await app.state.identity.authenticate(data["key"])  # from the cache this time
    assert again.models == principal.models

    listed = await client.get(f"/api/v1/keys/{data['id']}", headers=admin_headers)
    assert listed.json()["data"]["models"] == ["a-model", "b-model"]

    unlimited = await client.post("/api/v1/keys", headers=admin_headers, json={"name": "all"})
    assert unlimited.json()["data"]["models"] is None
    everything = await app.state.identity.authenticate(unlimited.json()["data"]["key"])
    assert everything.models is None
    assert everything.may_use("anything")

    # A limited key cannot make a key for more models than it may use itself.
    limited = {"X-API-Key": data["key"]}
    wider = await client.post("/api/v1/keys", headers=limited, json={"name": "w", "models": ["c-model"]})
    assert (wider.status_code, code_of(wider)) == (403, "G2_model_not_allowed")
    unbounded = await client.post("/api/v1/keys", headers=limited, json={"name": "w"})
    assert (unbounded.status_code, code_of(unbounded)) == (403, "G2_model_not_allowed")
    narrower = await client.post("/api/v1/keys", headers=limited, json={"name": "n", "models": ["a-model"]})
    assert narrower.status_code == 201
    assert narrower.json()["data"]["models"] == ["a-model"]

    empty_name = await client.post("/api/v1/keys", headers=admin_headers, json={"name": "x", "models": [""]})
    assert (empty_name.status_code, empty_name.json()["error"]["details"][0]["field"]) == (
        422,
        "body.models.0",
    )


# -- two processes ------------------------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("AIG_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AIG_TEST_REDIS_URL")
PROPAGATION_BOUND = 2.0


def _admin_sql(statement: str) -> None:
    async def go() -> None:
        assert PG_ADMIN_URL is not None
        url = (
            make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        )
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(go())


@pytest.fixture(scope="module")
def two_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess, dict[str, str]]]:
    assert PG_ADMIN_URL is not None
    assert REDIS_URL is not None
    name = f"aig_dep_{uuid.uuid4().hex[:12]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    url = (
        make_url(PG_ADMIN_URL)
        .set(drivername="postgresql", database=name)
        .render_as_string(hide_password=False)
    )
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "AIG_SECRET_KEY": secrets.token_urlsafe(48),
        "AIG_CACHE_NAMESPACE": f"aigdep-{uuid.uuid4().hex[:8]}",
        "AIG_HOST": "127.0.0.1",
    }
    workdir = tmp_path_factory.mktemp("deployments-mp")
    servers = [ServerProcess(workdir / side, env=env) for side in ("a", "b")]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_healthy(timeout=60)
        logs = "\n".join(s.logs() for s in servers)
        email = re.search(r"^\s*email:\s+(\S+)\s*$", logs, re.MULTILINE)
        password = re.search(r"^\s*password:\s+(\S+)\s*$", logs, re.MULTILINE)
        assert email, logs
        assert password, logs
        login = httpx.post(
            servers[0].base_url + "/api/v1/auth/login",
            json={"username": email.group(1), "password": password.group(1)},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        yield servers[0], servers[1], {"Authorization": f"Bearer {login.json()['data']['access_token']}"}
    finally:
        for server in servers:
            if server.proc is not None:
                server.stop(timeout=20)
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _models(server: ServerProcess, headers: dict[str, str]) -> list[str]:
    response = httpx.get(server.base_url + "/v1/models", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


def _within(condition: Any, bound: float = PROPAGATION_BOUND) -> None:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < bound, f"not seen by the other process within {bound}s"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.skipif(
    not (PG_ADMIN_URL and REDIS_URL), reason="needs AIG_TEST_DATABASE_URL and AIG_TEST_REDIS_URL"
)
def test_a_change_made_through_one_process_applies_in_the_other(
    two_servers: tuple[ServerProcess, ServerProcess, dict[str, str]],
) -> None:
    a, b, headers = two_servers
    assert "shared-model" not in _models(b, headers)

    made = httpx.post(
        a.base_url + "/api/v1/deployments",
        headers=headers,
        json={"id": "shared", "model": "shared-model", "provider": "demo"},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    _within(lambda: "shared-model" in _models(b, headers))
    served = httpx.post(
        b.base_url + "/v1/chat/completions",
        headers=headers,
        json={"model": "shared-model", **CHAT},
        timeout=10,
    )
    assert (served.status_code, served.headers["X-AIG-Deployment"]) == (200, "shared")

    drained = httpx.post(a.base_url + "/api/v1/deployments/shared/drain", headers=headers, timeout=10)
    assert drained.status_code == 200
    _within(lambda: "shared-model" not in _models(b, headers))
    refused = httpx.post(
        b.base_url + "/v1/chat/completions",
        headers=headers,
        json={"model": "shared-model", **CHAT},
        timeout=10,
    )
    assert refused.status_code == 503, refused.text
    seen = httpx.get(b.base_url + "/api/v1/deployments/shared", headers=headers, timeout=10)
    assert seen.json()["data"]["draining"] is True

    deleted = httpx.delete(a.base_url + "/api/v1/deployments/shared", headers=headers, timeout=10)
    assert deleted.status_code == 200
    _within(
        lambda: (
            httpx.get(b.base_url + "/api/v1/deployments/shared", headers=headers, timeout=10).status_code
            == 404
        )
    )
