"""Remote guards: a guard service that is down, slow, or answering — a real ``aiguardian guard-service``
subprocess — and how the pipeline treats each (fail closed unless ``fail_open``)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiohttp import web

from aiguardian.guards.base import Action, GuardContext
from aiguardian.guards.loader import GuardLoader
from aiguardian.guards.pipeline import Decision, Pipeline
from aiguardian.guards.policy import parse
from aiguardian.guards.remote import RemoteGuards
from tests.server import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "guard-service-test-token"


async def run_remote(url: str, text: str, token: str | None = None, **entry: object) -> Decision:
    fields = ", ".join(f"{k}: {orjson.dumps(v).decode()}" for k, v in entry.items())
    yaml_text = f"input: [{{guard: far_away, remote: {{url: '{url}', timeout_ms: 2000}}{', ' if fields else ''}{fields}}}]"
    remote = RemoteGuards(token)
    try:
        return await Pipeline(GuardLoader(), remote).run(
            parse(yaml_text).named("default").input, GuardContext(text=text), thread_above_chars=2000
        )
    finally:
        await remote.close()


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_guard_service_that_is_down_blocks() -> None:
    decision = await run_remote(f"http://127.0.0.1:{closed_port()}", "hello")
    (verdict,) = decision.verdicts
    assert (verdict.guard, verdict.action, verdict.reason_codes) == (
        "far_away",
        Action.BLOCK,
        ["GUARD_UNAVAILABLE"],
    )


async def test_a_guard_service_that_is_down_with_fail_open_allows_with_a_warning() -> None:
    decision = await run_remote(f"http://127.0.0.1:{closed_port()}", "hello", fail_open=True)
    assert decision.action is Action.WARN
    assert decision.verdicts[0].reason_codes == ["GUARD_UNAVAILABLE"]


@pytest.fixture
async def slow_service() -> AsyncIterator[str]:
    release = asyncio.Event()

    async def check(_request: web.Request) -> web.Response:
        await release.wait()  # answers only when the test is over
        return web.json_response({"verdict": {"action": "allow"}})

    async def broken(_request: web.Request) -> web.Response:
        return web.json_response({"verdict": {"action": "maybe"}})

    app = web.Application()
    app.router.add_post("/slow/check", check)
    app.router.add_post("/broken/check", broken)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    release.set()
    await runner.cleanup()


async def test_a_guard_service_past_its_timeout_blocks_with_guard_timeout(slow_service: str) -> None:
    yaml_text = f"input: [{{guard: slow, remote: {{url: '{slow_service}/slow', timeout_ms: 100}}}}]"
    remote = RemoteGuards()
    try:
        decision = await Pipeline(GuardLoader(), remote).run(
            parse(yaml_text).named("default").input, GuardContext(text="x"), thread_above_chars=2000
        )
    finally:
        await remote.close()
    assert [(v.action, v.reason_codes) for v in decision.verdicts] == [(Action.BLOCK, ["GUARD_TIMEOUT"])]


async def test_a_malformed_answer_counts_as_unavailable(slow_service: str) -> None:
    decision = await run_remote(f"{slow_service}/broken", "x")
    assert [(v.action, v.reason_codes) for v in decision.verdicts] == [(Action.BLOCK, ["GUARD_UNAVAILABLE"])]


@pytest.fixture(scope="module")
def guard_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``aiguardian guard-service`` serving a keyword guard, with a token, in its own process."""
    port = free_port()
    log = (tmp_path_factory.mktemp("guard-service") / "service.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIG_")}
    env.update(AIG_GUARD_SERVICE_TOKEN=TOKEN, AIG_LOG_FORMAT="json", PYTHONPATH=str(ROOT))
    options = orjson.dumps({"words": ["forbidden"], "code": "REMOTE_WORD"}).decode()
    command = [sys.executable, "-m", "aiguardian", "guard-service", "tests.fakes.guards:KeywordGuard"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--options", options], cwd=ROOT, env=env, stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "the guard service exited"
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the guard service did not come up"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def test_a_real_guard_service_answers_the_pipeline(guard_service: str) -> None:
    async with httpx.AsyncClient() as http:
        health = await http.get(guard_service + "/healthz")
    assert health.json() == {"status": "ok", "guard": "KeywordGuard"}

    blocked = await run_remote(guard_service, "a forbidden word", token=TOKEN)
    (verdict,) = blocked.verdicts
    assert (verdict.guard, verdict.action, verdict.reason_codes) == (
        "far_away",
        Action.BLOCK,
        ["REMOTE_WORD"],
    )
    assert verdict.findings[0].type == "keyword"
    allowed = await run_remote(guard_service, "a fine word", token=TOKEN)
    assert allowed.action is Action.ALLOW


async def test_a_guard_service_refuses_callers_without_its_token(guard_service: str) -> None:
    async with httpx.AsyncClient() as http:
        refused = await http.post(guard_service + "/check", json={"text": "x"})
    assert refused.status_code == 401
    decision = await run_remote(guard_service, "a fine word", token="wrong")
    assert [(v.action, v.reason_codes) for v in decision.verdicts] == [(Action.BLOCK, ["GUARD_UNAVAILABLE"])]


async def test_a_guard_service_rejects_a_malformed_request(guard_service: str) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient() as http:
        response = await http.post(guard_service + "/check", json={"messages": []}, headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "E1_validation_error"


def test_guard_service_refuses_an_unknown_guard() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiguardian", "guard-service", "no_such_guard", "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIG_")},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown guard 'no_such_guard'" in result.stderr.decode()
