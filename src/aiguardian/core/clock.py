"""Time in one place: UTC everywhere, ISO 8601 on the wire."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def utc_now_iso() -> str:
    return iso(utc_now())


def iso(moment: datetime) -> str:
    if moment.tzinfo is None:  # SQLite hands naive datetimes back; we only ever store UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
