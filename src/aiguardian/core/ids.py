"""Identifiers: request / trace ids."""

from __future__ import annotations

import os
import re

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    """128 random bits as 32 hex digits, the shape of ``uuid4().hex`` without building a UUID (which costs
    three times the randomness it wraps)."""
    return os.urandom(16).hex()


def accept_request_id(candidate: str | None) -> str:
    """Keep a client's request id when it is safe to log and store; otherwise make one."""
    if candidate and _CLIENT_ID.match(candidate):
        return candidate
    return new_request_id()
