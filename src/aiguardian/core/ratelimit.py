"""Sliding-window-counter rate limits: in memory by default, in Redis (shared by every process) when
``REDIS_URL`` is set. If Redis fails, limits are kept in memory until it answers again, with a warning.

The ``limits`` library parses the limits, names the counters and counts in memory. On Redis, one request
has two limits to count (its client IP and its credential) and wants the window figures for its RateLimit-*
headers, and ``limits`` offers a round trip per counter and another per window read: three round trips in
a request's path, each costing more CPU than the rest of the rate limiting. So on Redis the hits and the
window reads of all the limits a request counts against are one Lua script, one round trip (a redis-py
pipeline of ``limits``' own scripts would be one round trip too, but redis-py checks the scripts exist with
``SCRIPT EXISTS`` before every pipeline: two). The script does the arithmetic of ``limits``'
``acquire_sliding_window.lua`` on ``limits``' own key layout, so its counters and ours are the same ones.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("aiguardian.ratelimit")

# KEYS: the previous and the current window's counters of each limit, in pairs. ARGV: each limit's amount
# and window in seconds, in pairs. Per limit, as ``acquire_sliding_window.lua`` in ``limits``: a current
# window older than its period becomes the previous one; the hit counts if the weighted count leaves room.
# Returned per limit: allowed (1/0), then the window after the hit as ``limits``' ``sliding_window.lua``
# returns it: previous count, previous TTL (ms), current count, current TTL (ms); all in one string of
# numbers, which redis-py reads at a fraction of the CPU a nested array costs it.
_HIT_SCRIPT = """
local result = {}
for i = 1, #KEYS / 2 do
    local previous_key, current_key = KEYS[2 * i - 1], KEYS[2 * i]
    local limit = tonumber(ARGV[2 * i - 1])
    local expiry = tonumber(ARGV[2 * i]) * 1000
    local current_ttl = tonumber(redis.call('pttl', current_key))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', current_key, previous_key)
        redis.call('set', current_key, 0, 'PX', current_ttl + expiry)
    end
    local previous_count = tonumber(redis.call('get', previous_key)) or 0
    local previous_ttl = math.max(0, tonumber(redis.call('pttl', previous_key)))
    local current_count = tonumber(redis.call('get', current_key)) or 0
    current_ttl = math.max(0, tonumber(redis.call('pttl', current_key)))
    local allowed = math.floor(previous_count * previous_ttl / expiry) + current_count + 1 <= limit
    if allowed then
        if redis.call('exists', current_key) == 1 then
            current_count = redis.call('incrby', current_key, 1)
        else
            redis.call('set', current_key, 1, 'PX', expiry * 2)
            current_count, current_ttl = 1, expiry * 2
        end
    end
    result[i] = table.concat({allowed and 1 or 0, previous_count, previous_ttl, current_count, current_ttl}, ' ')
end
return table.concat(result, ' ')
"""

_CONNECTIONS = 8  # Redis connections (and commands in flight) per process: each holds one for ~0.1 ms

Check = tuple[str, str]  # (limit, identifier), say ("600/minute", "key:1f2e...")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        values = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            values["Retry-After"] = str(max(1, self.reset_seconds))
        return values


def parse_limit(text: str) -> RateLimitItem:
    return parse(text)


def _decision(item: RateLimitItem, allowed: bool, window: tuple[int, float, int, float]) -> Decision:
    """Remaining and reset as ``limits``' ``SlidingWindowCounterRateLimiter.get_window_stats`` figures them
    from a window (previous count, seconds it has left, current count, seconds it has left)."""
    previous_count, previous_expires_in, current_count, current_expires_in = window
    expiry = item.get_expiry()
    weighted = previous_count * previous_expires_in / expiry + current_count
    remaining = max(0, item.amount - math.floor(weighted))
    reset_in = 0.0
    if previous_count or current_count:
        reset_in = min(
            previous_expires_in % (expiry / previous_count) if previous_count else math.inf,
            current_expires_in % expiry if current_count else math.inf,
        )
    return Decision(allowed, item.amount, remaining, math.ceil(reset_in))


class RateLimiter:
    def __init__(
        self, redis_url: str | None, namespace: str, retry_seconds: float = 2.0, timeout: float = 1.0
    ) -> None:
        self._memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._redis: Redis | None = None
        # A burst of requests waits its turn for a connection: a pool that refuses past its size would send
        # the burst's counts to memory, where each process counts alone. redis-py's BlockingConnectionPool
        # waits, but its condition, timer and bookkeeping cost as much CPU as the rest of the command; a
        # semaphore in front of a pool of the same size waits as well, for next to nothing when nobody does.
        self._slots = asyncio.Semaphore(_CONNECTIONS)
        if redis_url:
            self._redis = Redis.from_url(
                redis_url,
                max_connections=_CONNECTIONS,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
            )
            self._script = self._redis.register_script(_HIT_SCRIPT)
        # limits' RedisStorage names a counter "<key_prefix>:{<key>}" and its previous window "…/-1".
        self._prefix = f"{namespace}:limits:"
        self._retry_seconds = retry_seconds
        self._shared_down_until = 0.0
        self._parsed: dict[str, RateLimitItem] = {}

    @property
    def backend(self) -> str:
        return "redis" if self._redis is not None else "memory"

    def item(self, text: str) -> RateLimitItem:
        parsed = self._parsed.get(text)
        if parsed is None:
            parsed = self._parsed[text] = parse_limit(text)
        return parsed

    async def hit(self, limit: str, identifier: str) -> Decision:
        """Count one hit against ``limit`` for ``identifier``."""
        return (await self.hit_many(((limit, identifier),)))[0]

    async def hit_many(self, checks: Sequence[Check]) -> list[Decision]:
        """Count one hit against each ``(limit, identifier)``, each on its own as :meth:`hit` would, in one
        step (one Redis round trip); the decisions come in the order of ``checks``."""
        items = [(self.item(limit), identifier) for limit, identifier in checks]
        if self._shared_up():
            async with self._slots:
                if self._shared_up():  # it may have failed while this request waited for a connection
                    try:
                        return await self._hit_shared(items)
                    except (RedisError, OSError) as exc:
                        self._shared_down_until = time.monotonic() + self._retry_seconds
                        log.warning(
                            "redis unreachable, rate limits counted in memory", error=type(exc).__name__
                        )
        return [await self._hit_memory(item, identifier) for item, identifier in items]

    def _shared_up(self) -> bool:
        return self._redis is not None and time.monotonic() >= self._shared_down_until

    def _counter(self, item: RateLimitItem, identifier: str) -> str:
        return f"{self._prefix}{{{item.key_for(identifier)}}}"

    async def _hit_memory(self, item: RateLimitItem, identifier: str) -> Decision:
        allowed = await self._memory.hit(item, identifier)
        window = await self._memory.get_window_stats(item, identifier)
        return Decision(allowed, item.amount, max(0, window.remaining), _seconds_until(window.reset_time))

    async def _hit_shared(self, items: list[tuple[RateLimitItem, str]]) -> list[Decision]:
        keys: list[str] = []
        args: list[int] = []
        for item, identifier in items:
            counter = self._counter(item, identifier)
            keys += (counter + "/-1", counter)
            args += (item.amount, item.get_expiry())
        numbers = [int(n) for n in (await self._script(keys, args)).split()]
        decisions: list[Decision] = []
        for n, (item, _) in enumerate(items):
            allowed, previous, previous_ttl, current, current_ttl = numbers[5 * n : 5 * n + 5]
            window = (previous, previous_ttl / 1000, current, current_ttl / 1000)
            decisions.append(_decision(item, bool(allowed), window))
        return decisions

    async def clear(self, limit: str, identifier: str) -> None:
        item = self.item(limit)
        await self._memory.clear(item, identifier)
        if self._redis is not None:
            counter = self._counter(item, identifier)
            async with self._slots:
                await self._redis.delete(counter + "/-1", counter)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


def _seconds_until(moment: float) -> int:
    return max(0, math.ceil(moment - time.time()))
