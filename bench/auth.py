"""What authenticating a request with a cached API key costs, measured side by side in one process.

Two parts, one run, one event loop, each part's cases interleaved in blocks (rotating order) so that drift on
a shared machine hits them alike:

1. Micro, on the identity service of a running app (SQLite, memory cache), each await timed on its own:
   - ``await asyncio.sleep(0)``: the floor of one await that yields to the event loop;
   - ``tokens.digest(secret)``: the SHA-256 an API key lookup starts with;
   - ``await identity.authenticate(api_key)``: a cached API key (cache warmed first);
   - ``await identity.authenticate(access_token)``: a JWT login session (user and session state cached).
   An SQL counter on the engine checks that the timed loops never reach the database.

2. Through the app in-process: ``httpx.AsyncClient`` over ``httpx.ASGITransport``, the app from
   ``create_app(Settings(...))`` under ``asgi_lifespan.LifespanManager``, SQLite in a temp dir, log level
   WARNING, sequential requests:
   - ``GET /healthz``: no authentication, not audited, no access-log line (the baseline);
   - ``GET /bench/principal`` with ``X-API-Key``: a route added here that only depends on
     ``CurrentPrincipal`` (authentication + rate limiting, nothing else); quiet like ``/healthz``;
   - ``GET /api/v1/auth/me`` with ``X-API-Key``: the real route (authentication + rate limiting + one
     database read for the profile + response model + access-log call + audit row).
   Two apps run at once, one with ``rate_limit_enabled=True`` (the default limits) and one with it off, so
   the table shows what the limiter adds. Between blocks (outside the timed region) the limiter windows of
   the bench identifiers are cleared, so no request is refused and a window never holds more than one block
   (production windows hold at most the limit: 600 per key, 1200 per IP by default).

The user and key are made through the real service (``create_user`` / ``create_key``); nothing is mocked.
``auth_cache_ttl`` is raised to an hour so no cache entry expires mid-run. The process's ``AIG_*`` and plain
setting variables are dropped first, so the shell cannot change what is measured.

    .venv/bin/python bench/auth.py            # about 30 s here (2 cores); at most ~--budget + setup
    .venv/bin/python bench/auth.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy import event

from aiguardian.app import create_app
from aiguardian.identity import tokens
from aiguardian.identity.auth import CurrentPrincipal
from aiguardian.identity.service import Identity
from aiguardian.settings import Settings

PROBE_PATH = "/bench/principal"
ME_PATH = "/api/v1/auth/me"
HEALTH_PATH = "/healthz"
CLIENT_ADDR = ("127.0.0.1", 50000)
_PLAIN_SETTINGS = frozenset(
    {"DATABASE_URL", "REDIS_URL", "API_PORT", "CIRCUIT_BREAKER_THRESHOLD", "CACHE_TTL"}
)
_IDENTITY_TABLES = ("users", "api_keys", "refresh_tokens")
_DOCS = ("/openapi", "/docs")


class BenchError(Exception):
    """The bench could not measure what it claims to; the message says why."""


# -- statistics -------------------------------------------------------------------------------------------


@dataclass
class Stats:
    n: int
    mean: float  # microseconds
    p50: float
    p99: float


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted samples."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def summarize(samples_ns: list[int]) -> Stats:
    ordered = sorted(samples_ns)
    return Stats(
        n=len(ordered),
        mean=statistics.fmean(ordered) / 1000,
        p50=percentile(ordered, 0.50) / 1000,
        p99=percentile(ordered, 0.99) / 1000,
    )


@dataclass
class Case:
    name: str
    samples: list[int] = field(default_factory=list)  # nanoseconds, one per call
    block_means: list[float] = field(default_factory=list)  # microseconds, one per block, in round order

    def add_block(self, block: list[int]) -> None:
        self.samples.extend(block)
        self.block_means.append(statistics.fmean(block) / 1000)


def paired(a: Case, b: Case) -> tuple[float, float, float]:
    """Median and quartiles over rounds of (block mean of a - block mean of b): drift cancels per round."""
    diffs = sorted(x - y for x, y in zip(a.block_means, b.block_means, strict=False))
    if len(diffs) < 2:
        value = diffs[0] if diffs else float("nan")
        return value, value, value
    q1, q2, q3 = statistics.quantiles(diffs, n=4, method="inclusive")
    return q2, q1, q3


def timer_overhead_ns() -> float:
    """What reading perf_counter_ns twice costs: included in every sample, not subtracted."""
    best = []
    for _ in range(5):
        samples = []
        for _ in range(2000):
            t0 = time.perf_counter_ns()
            samples.append(time.perf_counter_ns() - t0)
        best.append(statistics.median(samples))
    return float(min(best))


# -- timing loops -----------------------------------------------------------------------------------------


async def time_async(fn: Callable[[Any], Awaitable[Any]], arg: Any, n: int) -> list[int]:
    out = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        await fn(arg)
        out[i] = clock() - t0
    return out


async def time_sync(fn: Callable[[Any], Any], arg: Any, n: int) -> list[int]:
    out = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(arg)
        out[i] = clock() - t0
    return out


async def time_get(client: httpx.AsyncClient, path: str, headers: dict[str, str], n: int) -> list[int]:
    out = [0] * n
    statuses = [0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        response = await client.get(path, headers=headers)
        out[i] = clock() - t0
        statuses[i] = response.status_code
    bad = [s for s in statuses if s != 200]
    if bad:
        raise BenchError(f"GET {path}: {len(bad)} of {n} responses were not 200 (first: {bad[0]})")
    return out


class SqlCounter:
    """Counts the statements an engine runs that touch the identity tables (not the audit writer's)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        lowered = statement.lower()
        if any(table in lowered for table in _IDENTITY_TABLES):
            self.count += 1


# -- the apps ---------------------------------------------------------------------------------------------


async def principal_only(principal: CurrentPrincipal) -> dict[str, str]:
    """Authentication + rate limiting (the ``CurrentPrincipal`` dependency) and nothing else."""
    return {"user_id": principal.user_id}


@dataclass
class Subject:
    """One app, its client, and a member with an API key and a login session made through the service."""

    label: str
    app: FastAPI
    client: httpx.AsyncClient
    identity: Identity
    api_key: str
    key_id: str
    access_token: str
    sql: SqlCounter

    @property
    def key_headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    async def clear_limits(self) -> None:
        runtime = self.app.state.runtime
        settings = runtime.settings
        if settings.rate_limit_enabled:
            await runtime.limiter.clear(settings.rate_limit_per_ip, f"ip:{CLIENT_ADDR[0]}")
            await runtime.limiter.clear(settings.rate_limit_default, f"key:{self.key_id}")


def bench_settings(data_dir: Path, *, rate_limit: bool) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        log_level="WARNING",
        log_format="json",
        cache_namespace=f"aigbench-{uuid.uuid4().hex[:8]}",
        rate_limit_enabled=rate_limit,
        auth_cache_ttl=3600.0,
        audit_exclude_paths=["/healthz", "/readyz", "/metrics", PROBE_PATH],
    )


async def start_subject(stack: contextlib.AsyncExitStack, label: str, settings: Settings) -> Subject:
    app = create_app(settings)
    app.add_api_route(PROBE_PATH, principal_only, methods=["GET"])
    # Appended, the probe would be matched after every other route; put it just before the first router
    # (the one that holds /healthz), so that routing costs the two about the same. No request yet: the
    # router builds its lookup lazily.
    routes = app.router.routes
    probe = routes.pop()
    routes.insert(
        next(i for i, r in enumerate(routes) if not getattr(r, "path", "").startswith(_DOCS)), probe
    )
    captured = io.StringIO()  # the first-admin banner (a throwaway password in a temp dir)
    try:
        with contextlib.redirect_stderr(captured):
            await stack.enter_async_context(LifespanManager(app, startup_timeout=30, shutdown_timeout=30))
    except Exception:
        sys.stderr.write(captured.getvalue())
        raise
    transport = httpx.ASGITransport(app=app, client=CLIENT_ADDR)
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url="http://testserver")
    )
    identity: Identity = app.state.identity
    email = f"bench-{uuid.uuid4().hex[:8]}@example.test"
    password = f"pw-{uuid.uuid4().hex}"
    user = await identity.create_user(email, password, "Bench")
    key, secret = await identity.create_key(user.id, "bench", ["read", "write"])
    _, pair = await identity.login(email, password)
    counter = SqlCounter()
    event.listen(app.state.runtime.db.engine.sync_engine, "before_cursor_execute", counter)
    subject = Subject(label, app, client, identity, secret, key.id, pair.access_token, counter)

    # Warm and check: both credentials resolve to the member; both routes answer 200.
    by_key = await identity.authenticate(secret)
    by_token = await identity.authenticate(pair.access_token)
    if (by_key.via, by_key.key_id, by_key.user_id) != ("api_key", key.id, user.id):
        raise BenchError(f"the API key resolved to {by_key!r}")
    if (by_token.via, by_token.user_id) != ("session", user.id):
        raise BenchError(f"the access token resolved to {by_token!r}")
    for path, headers in (
        (HEALTH_PATH, {}),
        (PROBE_PATH, subject.key_headers),
        (ME_PATH, subject.key_headers),
    ):
        response = await client.get(path, headers=headers)
        if response.status_code != 200:
            raise BenchError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
    me = (await client.get(ME_PATH, headers=subject.key_headers)).json()
    if me.get("data", {}).get("id") != user.id:
        raise BenchError(f"GET {ME_PATH} did not answer the member: {str(me)[:300]}")
    return subject


# -- the two parts ----------------------------------------------------------------------------------------


async def run_micro(subject: Subject, n: int, blocks: int, deadline: float) -> tuple[dict[str, Case], bool]:
    identity = subject.identity
    loops: dict[str, Callable[[int], Awaitable[list[int]]]] = {
        "await asyncio.sleep(0)": lambda k: time_async(asyncio.sleep, 0, k),
        "tokens.digest(api_key)": lambda k: time_sync(tokens.digest, subject.api_key, k),
        "await authenticate(api_key)": lambda k: time_async(identity.authenticate, subject.api_key, k),
        "await authenticate(access_token)": lambda k: time_async(
            identity.authenticate, subject.access_token, k
        ),
    }
    cases = {name: Case(name) for name in loops}
    for loop in loops.values():  # warm-up, not counted
        await loop(min(n, 500))
    per_block = max(1, n // blocks)
    names = list(loops)
    complete = True
    for round_no in range(blocks):
        if round_no and time.monotonic() > deadline:
            complete = False
            break
        offset = round_no % len(names)
        for name in names[offset:] + names[:offset]:
            cases[name].add_block(await loops[name](per_block))
    return cases, complete


APP_ROUTES = (
    ("GET /healthz (no auth)", HEALTH_PATH, False),
    ("GET /bench/principal (X-API-Key)", PROBE_PATH, True),
    ("GET /api/v1/auth/me (X-API-Key)", ME_PATH, True),
)


async def run_app(
    subjects: list[Subject], n: int, block: int, deadline: float
) -> tuple[dict[tuple[str, str], Case], int, int]:
    plan = [(subject, name, path, needs_key) for subject in subjects for name, path, needs_key in APP_ROUTES]
    cases = {(subject.label, name): Case(name) for subject, name, _, _ in plan}
    for subject, _, path, needs_key in plan:  # warm-up, not counted
        await subject.clear_limits()
        await time_get(subject.client, path, subject.key_headers if needs_key else {}, min(block, 200))
    for subject in subjects:
        subject.sql.count = 0
    rounds = max(1, n // block)
    done = 0
    for round_no in range(rounds):
        if round_no and time.monotonic() > deadline:
            break
        offset = round_no % len(plan)
        for subject, name, path, needs_key in plan[offset:] + plan[:offset]:
            await subject.clear_limits()
            samples = await time_get(subject.client, path, subject.key_headers if needs_key else {}, block)
            cases[(subject.label, name)].add_block(samples)
        done += 1
    return cases, done, rounds


# -- output -----------------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            f"{cell:<{w}}" if i < left else f"{cell:>{w}}"
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def us(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def print_micro(cases: dict[str, Case], complete: bool) -> None:
    stats = {name: summarize(case.samples) for name, case in cases.items()}
    floor = stats["await asyncio.sleep(0)"].mean
    digest = stats["tokens.digest(api_key)"].mean
    rows = [
        (
            name,
            str(s.n),
            us(s.mean),
            us(s.p50),
            us(s.p99),
            f"x{s.mean / floor:.2f}",
            f"x{s.mean / digest:.1f}",
        )
        for name, s in stats.items()
    ]
    table(("case", "n", "mean us", "p50 us", "p99 us", "/ sleep(0)", "/ digest"), rows)
    if not complete:
        print("(stopped early at the time budget: fewer samples than asked)")


def print_app(
    subjects: list[Subject], cases: dict[tuple[str, str], Case], done: int, rounds: int, block: int
) -> None:
    health_name, probe_name, me_name = (name for name, _, _ in APP_ROUTES)
    rows = []
    for subject in subjects:
        base = summarize(cases[(subject.label, health_name)].samples).mean
        for name, _, _ in APP_ROUTES:
            s = summarize(cases[(subject.label, name)].samples)
            rows.append(
                (subject.label, name, str(s.n), us(s.mean), us(s.p50), us(s.p99), f"x{s.mean / base:.2f}")
            )
    table(("rate limiting", "request", "n", "mean us", "p50 us", "p99 us", "/ healthz"), rows, left=2)
    if done < rounds:
        print(f"(stopped early at the time budget: {done} of {rounds} rounds of {block})")

    print()
    print("added per request (us): difference of means, of medians, and over rounds the median [quartiles]")
    print("of the paired block-mean differences (drift cancels within a round)")
    diff_rows = []

    def add(label: str, a: Case, b: Case) -> None:
        sa, sb = summarize(a.samples), summarize(b.samples)
        mid, q1, q3 = paired(a, b)
        diff_rows.append(
            (label, us(sa.mean - sb.mean), us(sa.p50 - sb.p50), f"{us(mid)} [{us(q1)}, {us(q3)}]")
        )

    for subject in subjects:
        c = {name: cases[(subject.label, name)] for name, _, _ in APP_ROUTES}
        auth = "auth + limiter" if subject.label == "on" else "auth"
        add(f"limits {subject.label}: principal - healthz ({auth})", c[probe_name], c[health_name])
        add(f"limits {subject.label}: me - healthz ({auth} + route)", c[me_name], c[health_name])
        add(f"limits {subject.label}: me - principal (route: db read, audit, log)", c[me_name], c[probe_name])
    if len(subjects) == 2:
        on, off = subjects
        for name, label in ((probe_name, "principal"), (me_name, "me")):
            add(f"limiter: {label} on - {label} off", cases[(on.label, name)], cases[(off.label, name)])
    table(("difference", "mean", "p50", "paired round median [q1, q3]"), diff_rows)


# -- main -------------------------------------------------------------------------------------------------


def drop_setting_env() -> None:
    for name in list(os.environ):
        if name.upper().startswith("AIG_") or name.upper() in _PLAIN_SETTINGS:
            del os.environ[name]


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    deadline = started + args.budget
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}) on {platform.system()} "
        f"{platform.machine()}, {os.cpu_count()} CPUs; GC on; perf_counter_ns read twice costs "
        f"~{timer_overhead_ns():.0f} ns (in every sample, not subtracted)",
        flush=True,
    )
    async with contextlib.AsyncExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aig-bench-auth-")))
        subjects = [
            await start_subject(stack, "on", bench_settings(root / "limits-on", rate_limit=True)),
            await start_subject(stack, "off", bench_settings(root / "limits-off", rate_limit=False)),
        ]
        print(
            f"setup {time.monotonic() - started:.1f}s (two apps, SQLite in {root})",
            file=sys.stderr,
            flush=True,
        )

        subject = subjects[0]
        subject.sql.count = 0
        micro, complete = await run_micro(subject, args.iterations, args.micro_blocks, deadline)
        micro_sql = subject.sql.count
        print(f"micro done at {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)

        cases, done, rounds = await run_app(subjects, args.requests, args.block, deadline)
        app_sql = {s.label: s.sql.count for s in subjects}
        print(f"app done at {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)

        print()
        print(
            "1. micro: the identity service of the running app (SQLite, memory cache), each call timed, "
            f"in {args.micro_blocks} interleaved blocks per case"
        )
        print()
        print_micro(micro, complete)
        print(
            f"identity-table SQL statements during the timed loops: {micro_sql} (0 = every call a cache hit)"
        )
        print()
        per_case = done * args.block
        print(
            f"2. through the app: httpx.AsyncClient -> ASGITransport -> create_app(), SQLite, log level WARNING, "
            f"sequential; {per_case} requests per case in blocks of {args.block}, interleaved"
        )
        print()
        print_app(subjects, cases, done, rounds, args.block)
        for s in subjects:
            print(
                f"identity-table SQL statements, limits {s.label}: {app_sql[s.label]} over {per_case} /me + "
                f"{per_case} /bench/principal requests ({per_case} expected: /me reads the user from the "
                "database; the API key is resolved from the cache)"
            )
    print(f"\ntotal {time.monotonic() - started:.1f}s")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--iterations", type=int, default=20_000, help="micro: calls per case (default 20000)"
    )
    parser.add_argument("--micro-blocks", type=int, default=10, help="micro: interleaved blocks (default 10)")
    parser.add_argument("--requests", type=int, default=3_000, help="app: requests per case (default 3000)")
    parser.add_argument("--block", type=int, default=100, help="app: requests per block (default 100)")
    parser.add_argument(
        "--budget", type=float, default=90.0, help="seconds after which no new block starts (default 90)"
    )
    parser.add_argument("--quick", action="store_true", help="2000 calls, 300 requests per case")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.requests, args.block = 2_000, 300, 50
    if min(args.iterations, args.micro_blocks, args.requests, args.block) < 1 or args.budget <= 0:
        parser.error("counts must be at least 1 and --budget positive")
    if args.block > 500:
        parser.error("--block must be at most 500 (the default limit is 600 requests a minute per key)")
    drop_setting_env()
    gc.collect()
    try:
        return asyncio.run(run(args))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
