"""Operations: status and readiness from the registered probes, memory, metrics as JSON."""

from __future__ import annotations

from typing import Any

import psutil
from prometheus_client import REGISTRY

from aiguardian import __version__
from aiguardian.core.health import HealthState, Probe, run_probes
from aiguardian.ops.schemas import Component, MemoryReport, Readiness, Status

PROBE_TIMEOUT_SECONDS = 2.0
_ORDER: dict[HealthState, int] = {"healthy": 0, "degraded": 1, "unhealthy": 2}


async def status(probes: list[Probe], uptime_seconds: float) -> Status:
    results = await run_probes(probes, PROBE_TIMEOUT_SECONDS)
    components = {
        name: Component(state=r.state, latency_ms=_round(r.latency_ms), detail=r.detail)
        for name, (_, r) in results.items()
    }
    worst: HealthState = max(
        (c.state for c in components.values()), key=_ORDER.__getitem__, default="healthy"
    )
    return Status(
        status=worst, version=__version__, uptime_seconds=round(uptime_seconds, 3), components=components
    )


async def readiness(probes: list[Probe]) -> Readiness:
    results = await run_probes([p for p in probes if p.required_for_ready], PROBE_TIMEOUT_SECONDS)
    components = {
        name: Component(state=r.state, latency_ms=_round(r.latency_ms), detail=r.detail)
        for name, (_, r) in results.items()
    }
    return Readiness(ready=all(c.state != "unhealthy" for c in components.values()), components=components)


def memory() -> MemoryReport:
    process = psutil.Process().memory_info()
    system = psutil.virtual_memory()
    return MemoryReport(
        process_rss_bytes=process.rss,
        process_vms_bytes=process.vms,
        system_total_bytes=system.total,
        system_available_bytes=system.available,
        system_used_percent=system.percent,
    )


def metrics_as_json() -> dict[str, list[dict[str, Any]]]:
    """Every sample of the Prometheus registry, grouped by metric family."""
    out: dict[str, list[dict[str, Any]]] = {}
    for family in REGISTRY.collect():
        out[family.name] = [
            {"name": sample.name, "labels": dict(sample.labels), "value": sample.value}
            for sample in family.samples
        ]
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
