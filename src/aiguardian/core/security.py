"""Security primitives shared by features."""

from __future__ import annotations

from starlette.requests import HTTPConnection


def presented_credential(request: HTTPConnection) -> str | None:
    """The credential a client sent: ``Authorization: Bearer …`` or ``X-API-Key`` (an HTTP request's or a
    WebSocket's headers)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None
