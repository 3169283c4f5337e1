"""Audit log: turning finished requests into entries, reading pages back, verifying the chain."""

from __future__ import annotations

import orjson
from sqlalchemy import Select, select

from aiguardian.audit.chain import GENESIS, AuditEntry, link
from aiguardian.audit.models import AuditRecord
from aiguardian.audit.schemas import AuditFilters, AuditPage, AuditRow, AuditStatus, VerifyResult
from aiguardian.audit.writer import AuditWriter
from aiguardian.core.clock import as_utc, iso
from aiguardian.core.db import Database
from aiguardian.core.health import ComponentHealth, Probe
from aiguardian.core.middleware import RequestRecord
from aiguardian.core.pagination import decode_int_cursor, encode_cursor, escape_like


def status_for(http_status: int) -> AuditStatus:
    if http_status < 400:
        return "ALLOWED"
    if http_status < 500:
        return "BLOCKED"
    return "ERROR"


def _storable(value: str | None, limit: int) -> str | None:
    """Text as its column takes it. PostgreSQL refuses NUL characters and over-long values, and one refused
    row would hold back its whole batch, and every batch after it, for good."""
    return None if value is None else value.replace("\x00", "\ufffd")[:limit]


def entry_from_request(record: RequestRecord) -> AuditEntry:
    return AuditEntry(
        trace_id=record.trace_id,
        created_at=record.started_at,
        actor=_storable(record.actor, 128),
        route=_storable(record.path, 512) or "",
        method=_storable(record.method, 16) or "",
        status=status_for(record.status_code),
        http_status=record.status_code,
        reason_codes=record.reason_codes,
        session_id=_storable(record.session_id, 128),
        client_ip=_storable(record.client_ip, 64),
        latency_ms=record.latency_ms,
        action=_storable(record.action, 64),
        target=_storable(record.target, 128),
        guards=record.guards,
    )


def _filtered(filters: AuditFilters) -> Select[AuditRecord]:
    query = select(AuditRecord)
    if filters.status:
        query = query.where(AuditRecord.status == filters.status)
    if filters.action:
        query = query.where(AuditRecord.action == filters.action)
    if filters.actor:
        query = query.where(AuditRecord.actor == filters.actor)
    if filters.route:
        if filters.route.endswith("*"):
            query = query.where(AuditRecord.route.like(escape_like(filters.route[:-1]) + "%", escape="\\"))
        else:
            query = query.where(AuditRecord.route == filters.route)
    if filters.reason_code:
        needle = orjson.dumps(filters.reason_code).decode()
        query = query.where(AuditRecord.reason_codes.like("%" + escape_like(needle) + "%", escape="\\"))
    if filters.since:
        query = query.where(AuditRecord.created_at >= as_utc(filters.since))
    if filters.until:
        query = query.where(AuditRecord.created_at < as_utc(filters.until))
    return query


def to_row(record: AuditRecord) -> AuditRow:
    return AuditRow(
        id=record.id,
        trace_id=record.trace_id,
        timestamp=iso(record.created_at),
        actor=record.actor,
        route=record.route,
        method=record.method,
        status=record.status,
        http_status=record.http_status,
        reason_codes=orjson.loads(record.reason_codes),
        session_id=record.session_id,
        client_ip=record.client_ip,
        latency_ms=record.latency_ms,
        action=record.action,
        target=record.target,
        guards=record.guards,
    )


async def list_page(db: Database, filters: AuditFilters, limit: int, cursor: str | None) -> AuditPage:
    """Newest first; ``cursor`` continues after the last row of the previous page."""
    query = _filtered(filters)
    if cursor:
        query = query.where(AuditRecord.id < decode_int_cursor(cursor))
    query = query.order_by(AuditRecord.id.desc()).limit(limit + 1)
    async with db.session() as session:
        records = list((await session.scalars(query)).all())
    more = len(records) > limit
    records = records[:limit]
    next_cursor = encode_cursor(records[-1].id) if more and records else None
    return AuditPage(items=[to_row(r) for r in records], next_cursor=next_cursor)


def _stored_hash(prev: str, record: AuditRecord) -> str | None:
    try:
        reason_codes = orjson.loads(record.reason_codes)
    except orjson.JSONDecodeError:
        return None
    entry = AuditEntry(
        trace_id=record.trace_id,
        created_at=record.created_at,
        actor=record.actor,
        route=record.route,
        method=record.method,
        status=record.status,
        http_status=record.http_status,
        reason_codes=reason_codes,
        session_id=record.session_id,
        client_ip=record.client_ip,
        latency_ms=record.latency_ms,
        action=record.action,
        target=record.target,
        guards=record.guards,
    )
    return link(prev, entry)


async def verify(db: Database, chunk: int = 5000) -> VerifyResult:
    """Walk the chain from the first row; report the first row whose hash or link does not hold."""
    prev = GENESIS
    checked = 0
    last_id = 0
    while True:
        async with db.session() as session:
            records = (
                await session.scalars(
                    select(AuditRecord).where(AuditRecord.id > last_id).order_by(AuditRecord.id).limit(chunk)
                )
            ).all()
        if not records:
            return VerifyResult(ok=True, checked=checked)
        for record in records:
            if record.prev_hash != prev:
                return VerifyResult(
                    ok=False,
                    checked=checked,
                    first_bad_id=record.id,
                    problem="link broken: a row before it was removed or altered",
                )
            if _stored_hash(prev, record) != record.hash:
                return VerifyResult(
                    ok=False,
                    checked=checked,
                    first_bad_id=record.id,
                    problem="row content does not match its hash",
                )
            prev = record.hash
            checked += 1
            last_id = record.id


def writer_probe(writer: AuditWriter) -> Probe:
    async def check() -> ComponentHealth:
        detail = {"queue_depth": writer.depth, "queue_max": writer.queue_max, "written": writer.written}
        if writer.is_full:
            return ComponentHealth("unhealthy", None, detail)
        return ComponentHealth(
            "degraded" if writer.depth > writer.queue_max // 2 else "healthy", None, detail
        )

    return Probe("audit", check, required_for_ready=False)
