"""Security primitives shared by features."""

from __future__ import annotations

from fastapi import Request


def presented_credential(request: Request) -> str | None:
    """The credential a client sent: ``Authorization: Bearer …`` or ``X-API-Key``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None
