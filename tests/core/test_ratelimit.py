"""Counting several limits at once: the same decisions as one at a time, the same on memory and on Redis,
and on Redis the very counters the ``limits`` library keeps (so processes on either share counts)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from aiguardian.core.ratelimit import Decision, RateLimiter
from tests.conftest import REDIS_URL

KINDS = ["memory"] + (["redis"] if REDIS_URL else [])
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="needs AIG_TEST_REDIS_URL")


def new_limiter(kind: str, namespace: str | None = None) -> RateLimiter:
    return RateLimiter(REDIS_URL if kind == "redis" else None, namespace or f"rltest-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def limiters(kind: str) -> AsyncIterator[tuple[RateLimiter, RateLimiter]]:
    pair = new_limiter(kind), new_limiter(kind)
    yield pair
    for limiter in pair:
        await limiter.close()


def figures(decisions: list[Decision]) -> list[tuple[bool, int, int]]:
    return [(d.allowed, d.limit, d.remaining) for d in decisions]


async def test_counting_limits_together_decides_as_counting_them_apart(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    together, apart = limiters
    checks = [("3/minute", f"ip:{uuid.uuid4().hex}"), ("5/minute", f"key:{uuid.uuid4().hex}")]
    joint = [await together.hit_many(checks) for _ in range(7)]
    single = [[await apart.hit(limit, who) for limit, who in checks] for _ in range(7)]
    assert [figures(step) for step in joint] == [figures(step) for step in single]
    assert [step[0].allowed for step in joint] == [True] * 3 + [False] * 4
    assert [step[1].remaining for step in joint] == [4, 3, 2, 1, 0, 0, 0]
    for step in joint:
        for decision in step:
            assert 0 <= decision.reset_seconds <= 60


async def test_a_refused_limit_does_not_keep_the_others_from_counting(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    limiter, _ = limiters
    per_ip, per_key = ("100/minute", f"ip:{uuid.uuid4().hex}"), ("2/minute", f"key:{uuid.uuid4().hex}")
    steps = [await limiter.hit_many([per_ip, per_key]) for _ in range(4)]
    assert [key.allowed for _, key in steps] == [True, True, False, False]
    assert [ip.remaining for ip, _ in steps] == [99, 98, 97, 96]
    refused = steps[-1][1].headers()
    assert refused["RateLimit-Limit"] == "2"
    assert refused["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 60


async def test_one_identifier_under_two_limits_counts_under_each(
    limiters: tuple[RateLimiter, RateLimiter],
) -> None:
    limiter, _ = limiters
    who = f"ip:{uuid.uuid4().hex}"
    steps = [await limiter.hit_many([("2/minute", who), ("4/hour", who)]) for _ in range(5)]
    assert [(a.allowed, b.allowed) for a, b in steps] == [(True, True)] * 2 + [(False, True)] * 2 + [
        (False, False)
    ]


@needs_redis
async def test_memory_and_redis_decide_alike() -> None:
    memory, redis = new_limiter("memory"), new_limiter("redis")
    checks = [("4/minute", f"ip:{uuid.uuid4().hex}"), ("6/minute", f"key:{uuid.uuid4().hex}")]
    on_memory = [figures(await memory.hit_many(checks)) for _ in range(8)]
    on_redis = [figures(await redis.hit_many(checks)) for _ in range(8)]
    assert on_memory == on_redis
    await redis.close()


@needs_redis
async def test_redis_counters_are_the_ones_limits_keeps() -> None:
    """A process counting with ``limits``' own Redis storage and one counting with ours share the counts."""
    namespace = f"rltest-{uuid.uuid4().hex[:8]}"
    ours = new_limiter("redis", namespace)
    storage = RedisStorage(
        "async+" + (REDIS_URL or ""), implementation="redispy", key_prefix=f"{namespace}:limits"
    )
    theirs = SlidingWindowCounterRateLimiter(storage)
    item, who = ours.item("5/minute"), uuid.uuid4().hex

    assert (await ours.hit("5/minute", who)).allowed
    assert await theirs.hit(item, who)
    assert (await ours.hit("5/minute", who)).remaining == 2
    assert (await theirs.get_window_stats(item, who)).remaining == 2
    assert [await theirs.hit(item, who) for _ in range(3)] == [True, True, False]
    assert not (await ours.hit("5/minute", who)).allowed

    await ours.clear("5/minute", who)
    assert (await theirs.get_window_stats(item, who)).remaining == 5
    await ours.close()


async def test_unreachable_redis_counts_several_limits_in_memory() -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0", f"rltest-{uuid.uuid4().hex[:8]}")
    checks = [("100/minute", f"ip:{uuid.uuid4().hex}"), ("2/minute", f"key:{uuid.uuid4().hex}")]
    steps = [await limiter.hit_many(checks) for _ in range(3)]
    assert [(ip.allowed, key.allowed) for ip, key in steps] == [(True, True), (True, True), (True, False)]
    assert [key.remaining for _, key in steps] == [1, 0, 0]
    await limiter.close()


@needs_redis
async def test_a_burst_larger_than_the_connection_pool_is_counted_in_redis() -> None:
    namespace, who = f"rltest-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    burst, other = new_limiter("redis", namespace), new_limiter("redis", namespace)
    decisions = await asyncio.gather(*(burst.hit("250/minute", who) for _ in range(300)))
    assert sum(d.allowed for d in decisions) == 250
    assert not (await other.hit("250/minute", who)).allowed  # the other process sees the burst's count
    await burst.close()
    await other.close()
