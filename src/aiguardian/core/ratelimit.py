"""Rate limits with the ``limits`` library: in memory by default, in Redis (shared by every process) when
``REDIS_URL`` is set. If Redis fails, limits are kept in memory until it answers again, with a warning."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import structlog
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

log = structlog.get_logger("aiguardian.ratelimit")


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


class RateLimiter:
    def __init__(self, redis_url: str | None, namespace: str, retry_seconds: float = 2.0) -> None:
        self._memory = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._shared: SlidingWindowCounterRateLimiter | None = None
        if redis_url:
            storage: Storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=f"{namespace}:limits",
                socket_timeout=1,
                socket_connect_timeout=1,
            )
            self._shared = SlidingWindowCounterRateLimiter(storage)
        self._retry_seconds = retry_seconds
        self._shared_down_until = 0.0
        self._parsed: dict[str, RateLimitItem] = {}

    @property
    def backend(self) -> str:
        return "redis" if self._shared is not None else "memory"

    def item(self, text: str) -> RateLimitItem:
        parsed = self._parsed.get(text)
        if parsed is None:
            parsed = self._parsed[text] = parse_limit(text)
        return parsed

    async def hit(self, limit: str, *identifiers: str, stats: bool = True) -> Decision:
        """Count one hit. ``stats=False`` skips the window figures (one Redis round trip fewer) unless the
        hit is refused, when ``Retry-After`` needs them; such a decision has no headers of its own."""
        item = self.item(limit)
        limiter = self._memory
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            limiter = self._shared
        try:
            return await self._decide(limiter, item, identifiers, stats)
        except Exception as exc:
            if limiter is self._memory:
                raise
            self._shared_down_until = time.monotonic() + self._retry_seconds
            log.warning("redis unreachable, rate limits counted in memory", error=type(exc).__name__)
            return await self._decide(self._memory, item, identifiers, stats)

    @staticmethod
    async def _decide(
        limiter: SlidingWindowCounterRateLimiter,
        item: RateLimitItem,
        identifiers: tuple[str, ...],
        stats: bool,
    ) -> Decision:
        allowed = await limiter.hit(item, *identifiers)
        if allowed and not stats:
            return Decision(True, item.amount, -1, 0)
        window = await limiter.get_window_stats(item, *identifiers)
        reset = max(0, math.ceil(window.reset_time - time.time()))
        return Decision(allowed, item.amount, max(0, window.remaining), reset)

    async def clear(self, limit: str, *identifiers: str) -> None:
        item = self.item(limit)
        await self._memory.clear(item, *identifiers)
        if self._shared is not None:
            await self._shared.clear(item, *identifiers)
