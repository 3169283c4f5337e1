"""Which async HTTP client for the provider hot path: httpx or aiohttp, side by side in one run.

Starts ../shared/bench/mock_upstream.py (or uses --upstream URL), then for each client sends the same
chat-completion POSTs (sequential, and C at a time) and reports requests per second and the CPU seconds
this process spent per 1,000 requests — the figure that matters when the gateway shares cores with its
upstream. Rounds alternate between the clients so machine noise hits both.

    .venv/bin/python bench/gateway/clients.py [--requests 3000] [--concurrency 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import orjson

BODY = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 8}
)
HEADERS = {"Authorization": "Bearer dummy", "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_httpx(url: str, requests: int, concurrency: int) -> None:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await _drive(lambda: client.post(url, content=BODY, headers=HEADERS), requests, concurrency, "httpx")


async def run_aiohttp(url: str, requests: int, concurrency: int) -> None:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                assert response.status == 200

        await _drive(one, requests, concurrency, "aiohttp")


async def _drive(call, requests: int, concurrency: int, name: str) -> None:  # type: ignore[no-untyped-def]
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            result = await call()
            if name == "httpx":
                assert result.status_code == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def measure(name: str, url: str, requests: int, concurrency: int) -> tuple[float, float]:
    runner = run_httpx if name == "httpx" else run_aiohttp
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(runner(url, requests, concurrency))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return requests / wall, cpu * 1000 / requests * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--upstream", help="base URL of a running mock (default: start one)")
    args = parser.parse_args()
    mock = None
    if args.upstream:
        base = args.upstream.rstrip("/")
    else:
        script = Path(__file__).resolve().parents[3] / "shared" / "bench" / "mock_upstream.py"
        port = free_port()
        mock = subprocess.Popen(
            [sys.executable, str(script), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ},
        )
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(base.removesuffix("/v1") + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
    url = base + "/chat/completions"
    try:
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for concurrency in (1, args.concurrency):
                for name in ("httpx", "aiohttp"):
                    results.setdefault((name, concurrency), []).append(
                        measure(name, url, args.requests, concurrency)
                    )
    finally:
        if mock is not None:
            mock.terminate()
            mock.wait(10)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.requests} requests x {args.rounds} rounds"
    )
    print(f"{'client':8} {'conns':>5} {'req/s':>9} {'CPU ms per 1k req':>18}")
    summary: dict[tuple[str, int], tuple[float, float]] = {}
    for (name, concurrency), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rps = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        summary[(name, concurrency)] = (rps, cpu)
        print(f"{name:8} {concurrency:>5} {rps:>9.0f} {cpu:>18.1f}")
    for concurrency in (1, args.concurrency):
        (h_rps, h_cpu), (a_rps, a_cpu) = summary[("httpx", concurrency)], summary[("aiohttp", concurrency)]
        print(
            f"aiohttp / httpx at {concurrency} conns: req/s x{a_rps / h_rps:.2f}, CPU per request x{a_cpu / h_cpu:.2f}"
        )


if __name__ == "__main__":
    main()
