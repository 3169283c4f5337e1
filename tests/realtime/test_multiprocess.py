"""Two real server processes on one PostgreSQL database and one Redis: a WebSocket client on one process
receives the events of requests served by the other, and still only those it may see.

Runs only when both ``AIG_TEST_DATABASE_URL`` and ``AIG_TEST_REDIS_URL`` are set.
"""

from __future__ import annotations

import os
import re
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import PostgresDatabases
from tests.realtime.conftest import GUARD_SECONDS, events_until, open_socket, trace_is
from tests.server import ServerProcess

PG_ADMIN_URL = os.environ.get("AIG_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("AIG_TEST_REDIS_URL")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (PG_ADMIN_URL and REDIS_URL), reason="needs AIG_TEST_DATABASE_URL and AIG_TEST_REDIS_URL"
    ),
]


@dataclass
class Pair:
    a: ServerProcess
    b: ServerProcess
    admin_headers: dict[str, str]

    def ws(self, server: ServerProcess) -> str:
        return server.base_url.replace("http://", "ws://")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    assert PG_ADMIN_URL is not None
    assert REDIS_URL is not None
    databases = PostgresDatabases(PG_ADMIN_URL)
    namespace = f"aigrt-{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_URL": databases.create(),
        "REDIS_URL": REDIS_URL,
        "AIG_SECRET_KEY": secrets.token_urlsafe(48),
        "AIG_CACHE_NAMESPACE": namespace,
        "AIG_HOST": "127.0.0.1",
    }
    workdir: Path = tmp_path_factory.mktemp("realtime-pair")
    servers = [ServerProcess(workdir / side, env=env) for side in ("a", "b")]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_healthy(timeout=60)
        logs = "".join(server.logs() for server in servers)
        email = re.search(r"^\s*email:\s+(\S+)\s*$", logs, re.MULTILINE)
        password = re.search(r"^\s*password:\s+(\S+)\s*$", logs, re.MULTILINE)
        assert email, logs
        assert password, logs
        signed_in = httpx.post(
            servers[1].base_url + "/api/v1/auth/login",
            json={"username": email.group(1), "password": password.group(1)},
            timeout=GUARD_SECONDS,
        )
        assert signed_in.status_code == 200, signed_in.text
        token = signed_in.json()["data"]["access_token"]
        yield Pair(servers[0], servers[1], {"Authorization": f"Bearer {token}"})
    finally:
        for server in servers:
            if server.proc is not None:
                server.stop(timeout=20)
        databases.drop_all()
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        try:
            for key in client.scan_iter(f"{namespace}:*"):
                client.delete(key)
        finally:
            client.close()


def _member(pair: Pair) -> dict[str, str]:
    """A new member, made and signed in through process B."""
    email, password = f"m-{uuid.uuid4().hex[:8]}@example.com", secrets.token_urlsafe(18)
    made = httpx.post(
        pair.b.base_url + "/api/v1/users",
        headers=pair.admin_headers,
        json={"email": email, "password": password},
        timeout=GUARD_SECONDS,
    )
    assert made.status_code == 201, made.text
    signed_in = httpx.post(
        pair.b.base_url + "/api/v1/auth/login",
        json={"username": email, "password": password},
        timeout=GUARD_SECONDS,
    )
    assert signed_in.status_code == 200, signed_in.text
    return {"Authorization": f"Bearer {signed_in.json()['data']['access_token']}"}


async def _request_on(server: ServerProcess, headers: dict[str, str], trace_id: str) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=GUARD_SECONDS) as http:
        response = await http.get("/api/v1/auth/me", headers={**headers, "X-Request-ID": trace_id})
    assert response.status_code == 200, response.text


async def test_a_client_on_one_process_receives_the_events_of_requests_on_the_other(pair: Pair) -> None:
    first, second = _member(pair), _member(pair)
    admin_on_a = await open_socket(pair.ws(pair.a), headers=pair.admin_headers, topics=["request.completed"])
    first_on_a = await open_socket(pair.ws(pair.a), headers=first, topics=["*"])

    second_trace, first_trace = f"b2-{uuid.uuid4().hex}", f"b1-{uuid.uuid4().hex}"
    await _request_on(pair.b, second, second_trace)
    await events_until(admin_on_a, trace_is(second_trace))  # B's event reached A, for the admin
    for n in range(3):
        await _request_on(pair.b, first, f"{first_trace}-{n}")
    seen = await events_until(first_on_a, trace_is(f"{first_trace}-2"))
    traces = [m["data"]["trace_id"] for m in seen if m["topic"] == "request.completed"]
    assert traces == [f"{first_trace}-{n}" for n in range(3)]  # all of its own, in order, none of the other's
    await admin_on_a.close()
    await first_on_a.close()
