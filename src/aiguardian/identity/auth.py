"""FastAPI dependencies: who is calling, may they, and are they within their rate limits."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import Depends, Request

from aiguardian.core.errors import Forbidden, NotAuthenticated, RateLimited, ReasonCode
from aiguardian.core.ratelimit import Check, Decision
from aiguardian.core.runtime import get_runtime
from aiguardian.core.security import presented_credential
from aiguardian.identity.service import Identity, Principal


def get_identity(request: Request) -> Identity:
    identity: Identity = request.app.state.identity
    return identity


async def _identity_dependency(request: Request) -> Identity:
    # Dependencies are async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    return get_identity(request)


IdentityDep = Annotated[Identity, Depends(_identity_dependency)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def enforce(
    request: Request,
    limit: str,
    identifier: str,
    code: ReasonCode = ReasonCode.RATE_LIMITED,
    *,
    headers: bool = True,
) -> None:
    """Count one request against ``limit`` for ``identifier``; refuse with 429 past it. ``headers=False``
    leaves the RateLimit-* headers to another limit."""
    await enforce_many(request, [(limit, identifier)], code, headers=headers)


async def enforce_many(
    request: Request,
    checks: Sequence[Check],
    code: ReasonCode = ReasonCode.RATE_LIMITED,
    *,
    headers: bool = True,
) -> None:
    """Count one request against each ``(limit, identifier)`` at once (one Redis round trip for them all);
    refuse with 429 past any of them. The last one's figures are the RateLimit-* headers."""
    runtime = get_runtime(request)
    if not runtime.settings.rate_limit_enabled:
        return
    decisions: list[Decision] = await runtime.limiter.hit_many(checks)
    for (limit, _), decision in zip(checks, decisions, strict=True):
        if not decision.allowed:
            request.state.response_headers = decision.headers()
            raise RateLimited(
                f"rate limit of {limit} exceeded; retry later", reason_code=code, headers=decision.headers()
            )
    if headers:
        request.state.response_headers = decisions[-1].headers()


async def current_principal(request: Request) -> Principal:
    credential = presented_credential(request)
    if credential is None:
        raise NotAuthenticated("send `Authorization: Bearer <token or API key>` or `X-API-Key: <key>`")
    settings = get_runtime(request).settings
    by_ip: Check = (settings.rate_limit_per_ip, f"ip:{client_ip(request)}")
    counted = False

    async def count_ip() -> None:
        nonlocal counted
        if counted:
            return
        counted = True
        await enforce_many(request, [by_ip], headers=False)

    # The IP is counted before any database work a credential needs (a made-up key is a database
    # lookup), so guessing keys is rate limited too. A credential resolved from the cache needs none:
    # then the IP and the key are counted together, in one Redis round trip.
    principal = await get_identity(request).authenticate(credential, before_lookup=count_ip)
    request.state.actor = principal.actor
    subject = f"key:{principal.key_id}" if principal.key_id else f"user:{principal.user_id}"
    own: Check = (principal.rate_limit or settings.rate_limit_default, subject)
    await enforce_many(request, [own] if counted else [by_ip, own])
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_scope(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(
                f"this credential lacks the `{scope}` scope", reason_code=ReasonCode.SCOPE_MISSING
            )
        return principal

    return check


def check_model(principal: Principal, model: str) -> None:
    """Refuse a model the credential may not use (an API key made with ``models``)."""
    if not principal.may_use(model):
        raise Forbidden(
            f"this API key may not use the model `{model}`", reason_code=ReasonCode.MODEL_NOT_ALLOWED
        )


async def require_admin(principal: CurrentPrincipal) -> Principal:
    if not principal.is_admin:
        raise Forbidden("admins only", reason_code=ReasonCode.FORBIDDEN)
    if "admin" not in principal.scopes:
        raise Forbidden("this credential lacks the `admin` scope", reason_code=ReasonCode.SCOPE_MISSING)
    return principal


Reader = Annotated[Principal, Depends(require_scope("read"))]
Writer = Annotated[Principal, Depends(require_scope("write"))]
Admin = Annotated[Principal, Depends(require_admin)]
