"""Security primitives shared by features."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from aiguardian.core.errors import NotAuthenticated, ReasonCode
from aiguardian.core.runtime import get_runtime


def presented_credential(request: Request) -> str | None:
    """The credential a client sent: ``Authorization: Bearer …`` or ``X-API-Key``."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


def require_bootstrap_admin(request: Request) -> str:
    """Until identity lands, admin routes take the bootstrap admin token from the settings / data dir."""
    credential = presented_credential(request)
    if credential is None:
        raise NotAuthenticated("send the admin token as `Authorization: Bearer <token>`")
    expected = get_runtime(request).secrets.admin_token
    if not hmac.compare_digest(credential.encode(), expected.encode()):
        raise NotAuthenticated("invalid credentials", reason_code=ReasonCode.AUTH_INVALID)
    request.state.actor = "bootstrap-admin"
    return "bootstrap-admin"


AdminActor = Annotated[str, Depends(require_bootstrap_admin)]
