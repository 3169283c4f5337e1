"""Component health: each part of the system registers a probe; ``/readyz`` and status read them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

HealthState = Literal["healthy", "degraded", "unhealthy"]


@dataclass
class ComponentHealth:
    state: HealthState
    latency_ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Probe:
    name: str
    check: Callable[[], Awaitable[ComponentHealth]]
    required_for_ready: bool = True


async def run_probe(probe: Probe, limit_seconds: float) -> ComponentHealth:
    started = time.perf_counter()
    try:
        return await asyncio.wait_for(probe.check(), timeout=limit_seconds)
    except TimeoutError:
        return ComponentHealth("unhealthy", (time.perf_counter() - started) * 1000, {"error": "timed out"})
    except Exception as exc:
        return ComponentHealth(
            "unhealthy",
            (time.perf_counter() - started) * 1000,
            {"error": f"{type(exc).__name__}: {exc}"[:300]},
        )


async def run_probes(probes: list[Probe], limit_seconds: float) -> dict[str, tuple[Probe, ComponentHealth]]:
    results = await asyncio.gather(*(run_probe(p, limit_seconds) for p in probes))
    return {p.name: (p, r) for p, r in zip(probes, results, strict=True)}
