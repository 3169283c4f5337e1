"""Soak the realtime hub: one server process, many WebSocket subscribers, every event delivered to each.

One real ``aiguardian serve`` (SQLite, temp data dir, rate limits off, log level WARNING). ``--subscribers``
sockets (default 1,000) sign in as one member (like one user's many tabs) and subscribe to
``request.completed``; that member then makes ``--events`` real requests (default 100, ``GET
/api/v1/auth/me``, one every ``--interval`` seconds), each of which the server publishes as a
``request.completed`` event through the ordinary path (middleware -> event bus -> hub -> sockets).

Reported:

- lost: events a subscriber never got (must be 0), and subscribers that saw them out of order (must be 0);
- memory per idle connection: the server's RSS with every socket connected and subscribed, less its RSS
  before (after a warm-up that connected and closed a few), divided by the number of sockets;
- delivery latency: from the event's ``at`` (set by the server when the request completed) to its arrival
  in the client; p50 / p99 / max over every delivery. Client and server share the machine's clock. The
  client is one Python process reading every socket, so its own queueing is included;
- the server's CPU time while delivering, per delivery.

Stops by itself: the whole run is bounded by ``--max-seconds`` (default 100); whatever has not arrived by
then counts as lost.

    .venv/bin/python bench/realtime/soak.py                      # 1,000 x 100, about a minute here
    .venv/bin/python bench/realtime/soak.py --subscribers 100 --events 20

Clients offer permessage-deflate, as browsers do; ``serve`` declines it (``ws_per_message_deflate=False``):
with it, each socket held about 55 KiB more (74 against 17 KiB per idle connection, 300 sockets, here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psutil
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.server import ServerProcess

CONNECT_CONCURRENCY = 50


@dataclass
class Subscriber:
    ws: ClientConnection
    got: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def _open(url: str, token: str) -> ClientConnection:
    ws = await connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
        max_queue=None,  # the client reads as fast as it can; never let its own buffer push back
    )
    assert json.loads(await ws.recv())["type"] == "ready"
    await ws.send(json.dumps({"type": "subscribe", "topics": ["request.completed"]}))
    assert json.loads(await ws.recv())["type"] == "subscribed"
    return ws


async def _receive(subscriber: Subscriber, prefix: str, events: int) -> None:
    while len(subscriber.got) < events:
        raw = await subscriber.ws.recv()
        arrived = time.time()
        message = json.loads(raw)
        if message["type"] != "event":
            continue
        trace = message["data"]["trace_id"]
        if trace.startswith(prefix):
            subscriber.got.append(int(trace[len(prefix) :]))
            subscriber.latencies.append(arrived - _at(message["data"]["at"]))


def _sign_in(server: ServerProcess, email: str, password: str) -> str:
    answer = httpx.post(
        server.base_url + "/api/v1/auth/login", json={"username": email, "password": password}
    )
    answer.raise_for_status()
    return str(answer.json()["data"]["access_token"])


def _member(server: ServerProcess) -> tuple[str, dict[str, str]]:
    logs = server.logs()
    email = re.search(r"email:\s+(\S+)", logs).group(1)  # type: ignore[union-attr]
    password = re.search(r"password:\s+(\S+)", logs).group(1)  # type: ignore[union-attr]
    admin = {"Authorization": f"Bearer {_sign_in(server, email, password)}"}
    member_email, member_password = f"soak-{uuid.uuid4().hex[:8]}@example.com", uuid.uuid4().hex
    made = httpx.post(
        server.base_url + "/api/v1/users",
        headers=admin,
        json={"email": member_email, "password": member_password},
    )
    made.raise_for_status()
    token = _sign_in(server, member_email, member_password)
    return token, {"Authorization": f"Bearer {token}"}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def soak(args: argparse.Namespace, server: ServerProcess) -> int:
    process = psutil.Process(server.proc.pid)  # type: ignore[union-attr]
    token, headers = _member(server)
    url = server.base_url.replace("http://", "ws://") + "/api/v1/ws"
    deadline = time.monotonic() + args.max_seconds

    # Warm-up: the code paths of a connection, so the baseline is not paying for first imports.
    for ws in [await _open(url, token) for _ in range(10)]:
        await ws.close()
    await asyncio.sleep(1.0)
    rss_before = process.memory_info().rss

    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def opened() -> Subscriber:
        async with gate:
            return Subscriber(await _open(url, token))

    started = time.monotonic()
    subscribers = await asyncio.gather(*(opened() for _ in range(args.subscribers)))
    connect_seconds = time.monotonic() - started
    await asyncio.sleep(2.0)  # idle
    rss_idle = process.memory_info().rss
    per_connection = (rss_idle - rss_before) / args.subscribers

    prefix = f"soak-{uuid.uuid4().hex[:8]}-"
    readers = [asyncio.get_running_loop().create_task(_receive(s, prefix, args.events)) for s in subscribers]
    cpu_before = sum(process.cpu_times()[:2])
    sent_started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=30) as http:
        for n in range(args.events):
            answer = await http.get("/api/v1/auth/me", headers={"X-Request-ID": f"{prefix}{n}"})
            answer.raise_for_status()
            await asyncio.sleep(args.interval)
    _, pending = await asyncio.wait(readers, timeout=max(1.0, deadline - time.monotonic()))
    delivered_seconds = time.monotonic() - sent_started
    cpu_used = sum(process.cpu_times()[:2]) - cpu_before
    for task in pending:
        task.cancel()
    metrics = httpx.get(server.base_url + "/metrics").text
    slow = re.search(r"^aig_realtime_slow_consumers (\S+)", metrics, re.MULTILINE)
    connected = re.search(r"^aig_realtime_connections (\S+)", metrics, re.MULTILINE)
    for s in subscribers:
        await s.ws.close()

    expected = list(range(args.events))
    lost = sum(args.events - len(set(s.got)) for s in subscribers)
    disordered = sum(1 for s in subscribers if s.got != expected[: len(s.got)])
    latencies = [x for s in subscribers for x in s.latencies]
    deliveries = len(latencies)
    print(f"subscribers                 {args.subscribers} (connected in {connect_seconds:.1f} s)")
    print(f"events                      {args.events}, one every {args.interval * 1000:.0f} ms")
    print(f"deliveries                  {deliveries} of {args.subscribers * args.events}")
    print(f"lost                        {lost}")
    print(f"subscribers out of order    {disordered}")
    print(f"slow consumers closed       {slow.group(1) if slow else '?'}")
    print(f"server connections (gauge)  {connected.group(1) if connected else '?'}")
    print(
        f"server RSS                  {rss_before / 2**20:.1f} MiB before, {rss_idle / 2**20:.1f} MiB with every "
        f"socket idle: {per_connection / 1024:.1f} KiB per connection"
    )
    if latencies:
        print(
            f"delivery latency            p50 {_pct(latencies, 0.5) * 1000:.1f} ms, p99 "
            f"{_pct(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms, "
            f"mean {statistics.fmean(latencies) * 1000:.1f} ms"
        )
        print(
            f"server CPU while delivering {cpu_used:.2f} s over {delivered_seconds:.1f} s: "
            f"{cpu_used / deliveries * 1e6:.1f} us per delivery"
        )
    return 0 if lost == 0 and disordered == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between the member's requests")
    parser.add_argument("--max-seconds", type=float, default=100.0)
    args = parser.parse_args()

    # Two sockets per subscriber on this machine (ours and the server's); the server inherits the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 2 * args.subscribers + 512))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    server = ServerProcess(
        Path(tempfile.mkdtemp(prefix="aig-soak-")),
        env={
            "AIG_RATE_LIMIT_ENABLED": "false",
            "AIG_LOG_LEVEL": "WARNING",
            "AIG_REALTIME_MAX_CONNECTIONS": str(args.subscribers + 100),
        },
    )
    try:
        server.start()
        server.wait_healthy(timeout=60)
        time.sleep(0.5)  # the first-admin lines are printed just after the server is up
        code = asyncio.run(soak(args, server))
    finally:
        server.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
