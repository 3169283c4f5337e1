from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from aiguardian.core.health import HealthState


class Component(BaseModel):
    state: HealthState
    latency_ms: float | None
    detail: dict[str, Any]


class Status(BaseModel):
    status: HealthState
    version: str
    uptime_seconds: float
    components: dict[str, Component]


class Readiness(BaseModel):
    ready: bool
    components: dict[str, Component]


class MemoryReport(BaseModel):
    process_rss_bytes: int
    process_vms_bytes: int
    system_total_bytes: int
    system_available_bytes: int
    system_used_percent: float
