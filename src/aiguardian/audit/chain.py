"""The hash chain over audit rows: each row's hash covers its fields and the previous row's hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from aiguardian.core.clock import iso

GENESIS = "0" * 64


@dataclass(slots=True)
class AuditEntry:
    trace_id: str
    created_at: datetime
    actor: str | None
    route: str
    method: str
    status: str
    http_status: int
    reason_codes: list[str]
    session_id: str | None
    client_ip: str | None
    latency_ms: float
    action: str | None = None
    target: str | None = None
    guards: list[dict[str, Any]] | None = None  # guard verdict summaries: guard, action, score, codes

    def hashed_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "trace_id": self.trace_id,
            "created_at": iso(self.created_at),
            "actor": self.actor,
            "route": self.route,
            "method": self.method,
            "status": self.status,
            "http_status": self.http_status,
            "reason_codes": self.reason_codes,
            "session_id": self.session_id,
            "client_ip": self.client_ip,
            "latency_ms": self.latency_ms,
        }
        # Fields added after the first release are hashed only when set, so older rows still verify.
        if self.action is not None:
            fields["action"] = self.action
        if self.target is not None:
            fields["target"] = self.target
        if self.guards is not None:
            fields["guards"] = self.guards
        return fields


def link(prev_hash: str, entry: AuditEntry) -> str:
    payload = orjson.dumps(entry.hashed_fields(), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prev_hash.encode() + b"|" + payload).hexdigest()
