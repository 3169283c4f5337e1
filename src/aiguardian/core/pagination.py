"""Cursor pagination and safe LIKE patterns, shared by every list endpoint."""

from __future__ import annotations

import base64

from aiguardian.core.errors import ValidationFailed


def encode_cursor(last_key: str | int) -> str:
    """An opaque cursor: the sort key of the last row of the page."""
    return base64.urlsafe_b64encode(str(last_key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise bad_cursor() from None


MAX_ROW_ID = 2**63 - 1


def decode_int_cursor(cursor: str) -> int:
    """A row-id cursor, within the range of a BIGINT column (PostgreSQL refuses anything larger)."""
    try:
        value = int(decode_cursor(cursor))
    except ValueError:
        raise bad_cursor() from None
    if not 0 < value <= MAX_ROW_ID:
        raise bad_cursor()
    return value


def bad_cursor() -> ValidationFailed:
    return ValidationFailed(
        "cursor: not a cursor returned by this API", details=[{"field": "query.cursor", "message": "invalid"}]
    )


def escape_like(value: str) -> str:
    """Make user text match literally inside a LIKE pattern (used with ``escape="\\\\"``)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
