"""The cache: memory by default, memory in front of Redis when ``REDIS_URL`` is set.

Both tiers are cashews backends. The tiering and the fall-back are ours: cashews can suppress Redis errors
(``suppress=True``) but then every read is a silent miss, and it has no notion of "Redis is down, serve the
memory tier and warn, and come back to Redis when it returns", which is what the service needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

import structlog
from cashews import Cache as CashewsCache

from aiguardian.core import metrics
from aiguardian.settings import Settings

log = structlog.get_logger("aiguardian.cache")


def describe_error(exc: BaseException) -> str:
    """Name the cause: cashews wraps Redis errors in an exception that often says nothing by itself."""
    chain: list[BaseException] = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
        chain.append(nxt)
    said = [e for e in chain if str(e).strip()]
    chosen = said[-1] if said else chain[-1]
    return f"{type(chosen).__name__}: {chosen}"[:300]


class CacheBackend(Protocol):
    """What every cache tier offers. ``tests/contracts/test_cache.py`` holds each backend to it."""

    name: str

    async def get(self, key: str) -> Any | None: ...
    async def set(self, key: str, value: Any, ttl: float | None = None) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int: ...
    async def ping(self) -> float: ...
    async def close(self) -> None: ...


class CashewsBackend:
    """One cashews backend (``mem://`` or ``redis://``) under our namespace."""

    def __init__(self, name: str, url: str, namespace: str, **options: Any) -> None:
        self.name = name
        self._prefix = f"{namespace}:"
        self._cache = CashewsCache(name=f"{namespace}-{name}")
        self._cache.setup(url, **options)

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def get(self, key: str) -> Any | None:
        return await self._cache.get(self._key(key))

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        await self._cache.set(self._key(key), value, expire=ttl)

    async def delete(self, key: str) -> None:
        await self._cache.delete(self._key(key))

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        return int(await self._cache.incr(self._key(key), value=amount, expire=ttl))

    async def ping(self) -> float:
        started = time.perf_counter()
        await self._cache.ping()
        return (time.perf_counter() - started) * 1000

    async def clear_namespace(self) -> None:
        await self._cache.delete_match(self._prefix + "*")

    async def close(self) -> None:
        await self._cache.close()


def memory_backend(settings: Settings) -> CashewsBackend:
    return CashewsBackend("memory", f"mem://?size={settings.cache_memory_size}", settings.cache_namespace)


def redis_backend(settings: Settings, url: str | None = None) -> CashewsBackend:
    return CashewsBackend(
        "redis",
        url or settings.redis_url or "",
        settings.cache_namespace,
        suppress=False,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        wait_for_connection_timeout=settings.redis_timeout_seconds,
        retry_on_timeout=False,
    )


class TieredCache:
    """Memory in front of an optional shared tier (Redis).

    Reads try memory, then Redis (filling memory for ``local_ttl`` seconds). Writes go to both. When Redis
    fails, the cache logs one warning, keeps answering from memory, and a background probe switches back to
    Redis once it answers again. Counters (``incr``) live in Redis when it is up so they hold across
    processes; while it is down they count in memory.
    """

    name = "tiered"

    def __init__(
        self,
        memory: CashewsBackend,
        shared: CashewsBackend | None,
        *,
        local_ttl: float,
        retry_seconds: float,
    ) -> None:
        self.memory = memory
        self.shared = shared
        self.local_ttl = local_ttl
        self.retry_seconds = retry_seconds
        self.shared_up = shared is not None
        self.last_error: str | None = None
        self._probe: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return "memory+redis" if self.shared is not None else "memory"

    async def get(self, key: str) -> Any | None:
        value = await self.memory.get(key)
        if value is not None:
            metrics.CACHE_REQUESTS.labels(tier="memory", result="hit").inc()
            return value
        metrics.CACHE_REQUESTS.labels(tier="memory", result="miss").inc()
        if not self._use_shared():
            return None
        assert self.shared is not None
        try:
            value = await self.shared.get(key)
        except Exception as exc:
            self.shared_failed(exc)
            return None
        metrics.CACHE_REQUESTS.labels(tier="redis", result="hit" if value is not None else "miss").inc()
        if value is not None:
            await self.memory.set(key, value, ttl=self.local_ttl)
        return value

    async def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        if self._use_shared():
            assert self.shared is not None
            try:
                await self.shared.set(key, value, ttl=ttl)
            except Exception as exc:
                self.shared_failed(exc)
        local_ttl = ttl
        if self._use_shared():  # memory only fronts Redis briefly, so other processes' writes show soon
            local_ttl = self.local_ttl if ttl is None else min(ttl, self.local_ttl)
        await self.memory.set(key, value, ttl=local_ttl)

    async def delete(self, key: str) -> None:
        await self.memory.delete(key)
        if self._use_shared():
            assert self.shared is not None
            try:
                await self.shared.delete(key)
            except Exception as exc:
                self.shared_failed(exc)

    async def incr(self, key: str, amount: int = 1, ttl: float | None = None) -> int:
        if self._use_shared():
            assert self.shared is not None
            try:
                return await self.shared.incr(key, amount, ttl)
            except Exception as exc:
                self.shared_failed(exc)
        return await self.memory.incr(key, amount, ttl)

    async def ping(self) -> float:
        if self.shared is not None:
            return await self.shared.ping()
        return await self.memory.ping()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self.memory.close()
        if self.shared is not None:
            await self.shared.close()

    async def start(self) -> None:
        """Check Redis once at start; a Redis that is down at start is a warning, not a failure."""
        if self.shared is None:
            return
        try:
            await self.shared.ping()
        except Exception as exc:
            self.shared_failed(exc)

    def _use_shared(self) -> bool:
        return self.shared is not None and self.shared_up

    def shared_failed(self, exc: BaseException) -> None:
        self.last_error = describe_error(exc)
        if not self.shared_up:
            return
        self.shared_up = False
        metrics.CACHE_SHARED_UP.set(0)
        log.warning("redis unreachable, cache continues in memory", error=self.last_error)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_shared())

    async def _wait_for_shared(self) -> None:
        assert self.shared is not None
        while True:
            await asyncio.sleep(self.retry_seconds)
            try:
                await self.shared.ping()
            except Exception as exc:
                self.last_error = describe_error(exc)
                continue
            # What memory holds was written while Redis was away and may hide newer shared values.
            await self.memory.clear_namespace()
            self.shared_up = True
            self.last_error = None
            metrics.CACHE_SHARED_UP.set(1)
            log.warning("redis is back, cache uses it again")
            return


def build_cache(settings: Settings) -> TieredCache:
    shared = redis_backend(settings) if settings.redis_url else None
    return TieredCache(
        memory_backend(settings),
        shared,
        local_ttl=settings.cache_local_ttl,
        retry_seconds=settings.redis_retry_seconds,
    )
