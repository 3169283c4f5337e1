"""The rate limiter counts the same on memory and on Redis, and Redis counts are shared."""

from __future__ import annotations

import uuid

import pytest

from aiguardian.core.ratelimit import RateLimiter
from tests.conftest import REDIS_URL

KINDS = ["memory"] + (["redis"] if REDIS_URL else [])


@pytest.fixture(params=KINDS)
def limiter(request: pytest.FixtureRequest) -> RateLimiter:
    return RateLimiter(REDIS_URL if request.param == "redis" else None, f"rltest-{uuid.uuid4().hex[:8]}")


async def test_allows_up_to_the_limit_then_refuses_with_headers(limiter: RateLimiter) -> None:
    who = uuid.uuid4().hex
    decisions = [await limiter.hit("5/minute", who) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    refused = decisions[-1].headers()
    assert refused["RateLimit-Limit"] == "5"
    assert refused["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 60


async def test_identifiers_are_counted_apart(limiter: RateLimiter) -> None:
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    for _ in range(3):
        await limiter.hit("3/minute", a)
    assert not (await limiter.hit("3/minute", a)).allowed
    assert (await limiter.hit("3/minute", b)).allowed


@pytest.mark.skipif(not REDIS_URL, reason="needs AIG_TEST_REDIS_URL")
async def test_two_limiters_on_redis_share_one_count() -> None:
    namespace = f"rltest-{uuid.uuid4().hex[:8]}"
    first, second = RateLimiter(REDIS_URL, namespace), RateLimiter(REDIS_URL, namespace)
    who = uuid.uuid4().hex
    allowed = [(await (first if n % 2 else second).hit("10/minute", who)).allowed for n in range(16)]
    assert allowed.count(True) == 10


async def test_unreachable_redis_falls_back_to_memory() -> None:
    limiter = RateLimiter("redis://127.0.0.1:1/0", "rltest")
    who = uuid.uuid4().hex
    decisions = [await limiter.hit("2/minute", who) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
