from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

AuditStatus = Literal["ALLOWED", "BLOCKED", "ERROR"]


class AuditRow(BaseModel):
    id: int
    trace_id: str
    timestamp: str
    actor: str | None
    route: str
    method: str
    status: AuditStatus
    http_status: int
    reason_codes: list[str]
    session_id: str | None
    client_ip: str | None
    latency_ms: float
    action: str | None = None
    target: str | None = None
    guards: list[dict[str, Any]] | None = None


class AuditPage(BaseModel):
    items: list[AuditRow]
    next_cursor: str | None


class AuditFilters(BaseModel):
    status: AuditStatus | None = None
    reason_code: str | None = None
    action: str | None = None
    actor: str | None = None
    route: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class VerifyResult(BaseModel):
    ok: bool
    checked: int
    first_bad_id: int | None = None
    problem: str | None = None
