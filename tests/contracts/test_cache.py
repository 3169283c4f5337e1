"""One behaviour suite for every cache backend: memory, Redis, and the tiered cache over each."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from aiguardian.core.cache import CacheBackend, TieredCache, memory_backend, redis_backend
from tests.conftest import REDIS_URL, make_settings

KINDS = ["memory", "tiered-memory"] + (["redis", "tiered-redis"] if REDIS_URL else [])


@pytest.fixture(params=KINDS)
async def cache(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[CacheBackend]:  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path, "sqlite", None, redis_url=REDIS_URL, cache_local_ttl=0.2)
    kind = request.param
    backend: CacheBackend
    if kind == "memory":
        backend = memory_backend(settings)
    elif kind == "redis":
        backend = redis_backend(settings)
    else:
        shared = redis_backend(settings) if kind == "tiered-redis" else None
        backend = TieredCache(memory_backend(settings), shared, local_ttl=0.2, retry_seconds=0.2)
    yield backend
    await backend.close()


def key() -> str:
    return f"k-{uuid.uuid4().hex}"


async def test_missing_key_reads_none(cache: CacheBackend) -> None:
    assert await cache.get(key()) is None


async def test_set_then_get_round_trips_structures(cache: CacheBackend) -> None:
    k = key()
    value = {"user": "u1", "scopes": ["chat", "read"], "limit": 3, "ratio": 0.5}
    await cache.set(k, value, ttl=30)
    assert await cache.get(k) == value


async def test_delete_removes(cache: CacheBackend) -> None:
    k = key()
    await cache.set(k, "v", ttl=30)
    await cache.delete(k)
    assert await cache.get(k) is None


async def test_ttl_expires(cache: CacheBackend) -> None:
    k = key()
    await cache.set(k, "v", ttl=1)
    assert await cache.get(k) == "v"
    await asyncio.sleep(1.3)
    assert await cache.get(k) is None


async def test_incr_counts_from_zero(cache: CacheBackend) -> None:
    k = key()
    assert await cache.incr(k) == 1
    assert await cache.incr(k, 5) == 6


async def test_concurrent_incr_loses_no_update(cache: CacheBackend) -> None:
    k = key()
    await asyncio.gather(*(cache.incr(k) for _ in range(200)))
    assert await cache.incr(k, 0) == 200


async def test_ping_reports_latency(cache: CacheBackend) -> None:
    assert await cache.ping() >= 0
