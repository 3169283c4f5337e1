"""Two real server processes on one PostgreSQL database and one Redis: rate limits are counted once for
both, and a revocation or a disabled account made through one is refused by the other at once (the other's
cached view is dropped through Redis pub/sub).

Runs only when both ``AIG_TEST_DATABASE_URL`` and ``AIG_TEST_REDIS_URL`` are set.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from tests.identity import error_code
from tests.server import ServerProcess

PG_ADMIN_URL = os.environ.get("AIG_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AIG_TEST_REDIS_URL")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (PG_ADMIN_URL and REDIS_URL), reason="needs AIG_TEST_DATABASE_URL and AIG_TEST_REDIS_URL"
    ),
]

LIMIT = 20
PROPAGATION_BOUND = 2.0  # seconds a change made through one process may take to be seen by the other


def _async_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def _admin_sql(statement: str) -> None:
    async def go() -> None:
        assert PG_ADMIN_URL is not None
        engine = create_async_engine(_async_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(go())


def _sql(url: str, statement: str, params: dict[str, object]) -> None:
    async def go() -> None:
        engine = create_async_engine(_async_url(url))
        try:
            async with engine.begin() as conn:
                await conn.execute(text(statement), params)
        finally:
            await engine.dispose()

    asyncio.run(go())


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    database_url: str
    admin_email: str
    admin_password: str
    admin_headers: dict[str, str]


def _credentials(logs: str) -> tuple[str, str] | None:
    email = re.search(r"^\s*email:\s+(\S+)\s*$", logs, re.MULTILINE)
    password = re.search(r"^\s*password:\s+(\S+)\s*$", logs, re.MULTILINE)
    return (email.group(1), password.group(1)) if email and password else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    assert PG_ADMIN_URL is not None
    assert REDIS_URL is not None
    name = f"aig_mp_{uuid.uuid4().hex[:12]}"
    namespace = f"aigmp-{uuid.uuid4().hex[:8]}"
    _admin_sql(f'CREATE DATABASE "{name}"')
    database_url = make_url(PG_ADMIN_URL).set(drivername="postgresql", database=name)
    url = database_url.render_as_string(hide_password=False)
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "AIG_SECRET_KEY": secrets.token_urlsafe(48),
        "AIG_CACHE_NAMESPACE": namespace,
        "AIG_RATE_LIMIT_DEFAULT": f"{LIMIT}/minute",
        "AIG_HOST": "127.0.0.1",
    }
    workdir: Path = tmp_path_factory.mktemp("multiprocess")
    servers = [ServerProcess(workdir / side, env=env) for side in ("a", "b")]
    try:
        for server in servers:  # started together: they race through migrations and the first admin
            server.start()
        for server in servers:
            server.wait_healthy(timeout=60)
        printed = [c for c in (_credentials(s.logs()) for s in servers) if c is not None]
        assert len(printed) == 1, "exactly one process makes (and prints) the first admin"
        email, password = printed[0]
        response = httpx.post(
            servers[0].base_url + "/api/v1/auth/login",
            json={"username": email, "password": password},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        headers = {"Authorization": f"Bearer {response.json()['data']['access_token']}"}
        yield Cluster(servers[0], servers[1], url, email, password, headers)
    finally:
        for server in servers:
            if server.proc is not None:
                server.stop(timeout=20)
        _admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        try:
            for key in client.scan_iter(f"{namespace}:*"):
                client.delete(key)
        finally:
            client.close()


def _key(cluster: Cluster, **body: object) -> tuple[str, str]:
    response = httpx.post(
        cluster.a.base_url + "/api/v1/keys",
        headers=cluster.admin_headers,
        json={"name": f"mp-{uuid.uuid4().hex[:6]}", "scopes": ["read", "write"], **body},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    data = response.json()["data"]
    return data["id"], data["key"]


def _me(server: ServerProcess, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(server.base_url + "/api/v1/auth/me", headers=headers, timeout=10)


def _refused_within(
    server: ServerProcess, headers: dict[str, str], code: str, bound: float = PROPAGATION_BOUND
) -> float:
    """Poll ``server`` until it refuses ``headers`` with 401 ``code``; return how long that took."""
    started = time.monotonic()
    while True:
        response = _me(server, headers)
        if response.status_code != 200:
            assert (response.status_code, error_code(response)) == (401, code), response.text
            return time.monotonic() - started
        assert time.monotonic() - started < bound, f"still accepted after {bound}s"
        time.sleep(0.02)


def test_one_rate_limit_for_both_processes(cluster: Cluster) -> None:
    _, secret = _key(cluster)
    headers = {"X-API-Key": secret}
    answers = [_me((cluster.a, cluster.b)[n % 2], headers) for n in range(LIMIT + 10)]

    served = answers[:LIMIT]
    assert [r.status_code for r in served] == [200] * LIMIT
    # One count: the remaining budget falls by one per request whichever process served it.
    assert [int(r.headers["RateLimit-Remaining"]) for r in served] == list(range(LIMIT - 1, -1, -1))
    assert all(r.headers["RateLimit-Limit"] == str(LIMIT) for r in served)
    for response in answers[LIMIT:]:
        assert (response.status_code, error_code(response)) == (429, "E4_rate_limited"), response.text
        assert int(response.headers["Retry-After"]) >= 1
        assert response.headers["RateLimit-Limit"] == str(LIMIT)
        assert response.headers["RateLimit-Remaining"] == "0"
        assert 0 <= int(response.headers["RateLimit-Reset"]) <= 60
    assert {r.url.port for r in answers[LIMIT:]} == {cluster.a.port, cluster.b.port}


def test_a_key_revoked_through_one_process_is_refused_by_the_other(cluster: Cluster) -> None:
    key_id, secret = _key(cluster, rate_limit="1000/minute")
    headers = {"X-API-Key": secret}
    assert _me(cluster.b, headers).status_code == 200  # B resolves the key and caches it

    # Control: B does cache it. Revoked behind the service's back (no event), B still accepts it.
    control_id, control = _key(cluster, rate_limit="1000/minute")
    assert _me(cluster.b, {"X-API-Key": control}).status_code == 200
    _sql(cluster.database_url, "UPDATE api_keys SET revoked_at = now() WHERE id = :id", {"id": control_id})
    assert _me(cluster.b, {"X-API-Key": control}).status_code == 200

    revoked = httpx.delete(
        f"{cluster.a.base_url}/api/v1/keys/{key_id}", headers=cluster.admin_headers, timeout=10
    )
    assert revoked.status_code == 200, revoked.text
    took = _refused_within(cluster.b, headers, "G1_auth_revoked")
    print(f"\nrevocation through A refused on B after {took * 1000:.0f} ms")
    response = _me(cluster.a, headers)
    assert (response.status_code, error_code(response)) == (401, "G1_auth_revoked")


def test_a_user_disabled_through_one_process_is_refused_by_the_other(cluster: Cluster) -> None:
    email = f"mp-{uuid.uuid4().hex[:8]}@example.com"
    password = f"pw-{uuid.uuid4().hex}"
    registered = httpx.post(
        cluster.a.base_url + "/api/v1/auth/register", json={"email": email, "password": password}, timeout=10
    )
    assert registered.status_code == 201, registered.text
    user_id = registered.json()["data"]["id"]
    signed_in = httpx.post(
        cluster.b.base_url + "/api/v1/auth/login", json={"username": email, "password": password}, timeout=10
    )
    assert signed_in.status_code == 200, signed_in.text
    jwt_headers = {"Authorization": f"Bearer {signed_in.json()['data']['access_token']}"}
    made = httpx.post(
        cluster.b.base_url + "/api/v1/keys",
        headers=jwt_headers,
        json={"name": "mine", "scopes": ["read"]},
        timeout=10,
    )
    assert made.status_code == 201, made.text
    key_headers = {"X-API-Key": made.json()["data"]["key"]}
    for headers in (jwt_headers, key_headers):
        assert _me(cluster.b, headers).status_code == 200  # cached on B

    disabled = httpx.post(
        f"{cluster.a.base_url}/api/v1/users/{user_id}/disable", headers=cluster.admin_headers, timeout=10
    )
    assert disabled.status_code == 200, disabled.text
    took = _refused_within(cluster.b, jwt_headers, "G1_account_disabled")
    print(f"\naccount disabled through A refused on B after {took * 1000:.0f} ms")
    response = _me(cluster.b, key_headers)
    assert (response.status_code, error_code(response)) == (401, "G1_account_disabled")
