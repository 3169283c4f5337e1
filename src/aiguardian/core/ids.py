"""Identifiers: request / trace ids."""

from __future__ import annotations

import re
import uuid

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(candidate: str | None) -> str:
    """Keep a client's request id when it is safe to log and store; otherwise make one."""
    if candidate and _CLIENT_ID.match(candidate):
        return candidate
    return new_request_id()
