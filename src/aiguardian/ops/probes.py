"""Probes for the core dependencies: the database (with its breaker and migrations) and the cache."""

from __future__ import annotations

from aiguardian.core import migrate
from aiguardian.core.cache import TieredCache
from aiguardian.core.db import Database
from aiguardian.core.health import ComponentHealth, Probe


def database_probe(db: Database) -> Probe:
    async def check() -> ComponentHealth:
        detail: dict[str, object] = {
            "backend": db.backend,
            "breaker": {
                "state": db.breaker.state.value,
                "consecutive_failures": db.breaker.consecutive_failures,
                "times_opened": db.breaker.times_opened,
                "last_error": db.breaker.last_error,
            },
            "pool": db.pool_stats(),
        }
        try:
            latency = await db.ping()
            current = await migrate.current_revision(db)
        except Exception as exc:
            detail["error"] = f"{type(exc).__name__}: {exc}"[:300]
            detail["breaker"] = {**detail["breaker"], "state": db.breaker.state.value}  # type: ignore[dict-item]
            return ComponentHealth("unhealthy", None, detail)
        head = migrate.head_revision()
        detail["migrations"] = {"current": current, "head": head, "up_to_date": current == head}
        return ComponentHealth("healthy" if current == head else "unhealthy", latency, detail)

    return Probe("database", check)


def cache_probe(cache: TieredCache) -> Probe:
    async def check() -> ComponentHealth:
        latency = await cache.memory.ping()
        detail: dict[str, object] = {"mode": cache.mode}
        if cache.shared is None:
            return ComponentHealth("healthy", latency, detail)
        redis: dict[str, object] = {
            "state": "up" if cache.shared_up else "down",
            "last_error": cache.last_error,
        }
        detail["redis"] = redis
        if cache.shared_up:
            try:
                latency = await cache.shared.ping()
            except Exception as exc:
                cache.shared_failed(exc)
                redis.update(state="down", last_error=cache.last_error)
        # A Redis outage degrades the service (memory only) but does not make it unready.
        return ComponentHealth("healthy" if cache.shared_up else "degraded", latency, detail)

    return Probe("cache", check)
