"""``/api/v1/guards`` and ``/api/v1/validate``: the guards without the gateway. Thin: logic is in service."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from aiguardian.core.envelope import OPENAI_PREFIX, Envelope, failure, ok
from aiguardian.core.errors import Forbidden, NotFound, ReasonCode, ValidationFailed
from aiguardian.core.http import RequestId, audit, request_id
from aiguardian.guards.base import Action, Direction, GuardContext
from aiguardian.guards.chat import chat_context, record, redact_messages, warning_items
from aiguardian.guards.pipeline import GuardBlocked, redact_text
from aiguardian.guards.policy import PolicyError
from aiguardian.guards.schemas import (
    CheckRequest,
    GuardsOverview,
    ReloadResult,
    ValidateRequest,
    ValidateResult,
    VerdictOut,
)
from aiguardian.guards.service import GuardService
from aiguardian.identity.auth import Admin, CurrentPrincipal, Reader
from aiguardian.identity.service import Principal

router = APIRouter(prefix="/api/v1", tags=["guards"])

# The route whose policy /api/v1/validate applies when none is named: what the gateway would do for you.
CHAT_ROUTE = "/v1/chat/completions"
# Options anyone may set on a one-off check; others (model paths ...) are for admins.
PUBLIC_OPTIONS = frozenset({"threshold", "action"})


async def get_guards(request: Request) -> GuardService:
    guards: GuardService = request.app.state.guards
    return guards


GuardsDep = Annotated[GuardService, Depends(get_guards)]


async def require_checker(principal: CurrentPrincipal) -> Principal:
    """Running guards on your own text: a credential with the ``chat`` or the ``write`` scope."""
    if not principal.scopes & {"chat", "write"}:
        raise Forbidden(
            "this credential needs the `chat` or `write` scope", reason_code=ReasonCode.SCOPE_MISSING
        )
    return principal


Checker = Annotated[Principal, Depends(require_checker)]


def _may_see_everything(principal: Principal) -> bool:
    return principal.is_admin and "admin" in principal.scopes


@router.get("/guards", response_model=Envelope[GuardsOverview])
async def list_guards(principal: Reader, guards: GuardsDep, rid: RequestId) -> Envelope[GuardsOverview]:
    """The guards there are, and the policy in force: all of it for admins, the caller's own otherwise."""
    policy = guards.policy_for(CHAT_ROUTE, principal.key_id, principal.user_id)
    view = guards.overview(full=_may_see_everything(principal), policy=policy)
    return ok(GuardsOverview.model_validate(view), rid)


@router.post("/validate", response_model=Envelope[ValidateResult])
async def validate(
    body: ValidateRequest, request: Request, principal: Checker, guards: GuardsDep, rid: RequestId
) -> Envelope[ValidateResult]:
    """Run a policy's input or output guards on a text or on chat messages; every verdict comes back."""
    try:
        policy = (
            guards.policies.named(body.policy)
            if body.policy
            else guards.policy_for(CHAT_ROUTE, principal.key_id, principal.user_id)
        )
    except PolicyError as exc:
        raise NotFound(str(exc)) from None
    direction = Direction(body.direction)
    messages = body.messages or [{"role": "user", "content": body.text or ""}]
    if direction is Direction.INPUT:
        context = chat_context(messages, body.sources, model=None, route=request.url.path)
    else:
        context = GuardContext(text=body.text or "", messages=body.messages or [], sources=body.sources or [])
    decision = await guards.run(policy, direction, context)
    record(request, direction, decision.verdicts)
    result = ValidateResult(
        policy=policy.name,
        direction=direction.value,
        action=decision.action.value,
        blocked=decision.blocked,
        verdicts=[VerdictOut.of(v) for v in decision.verdicts],
        warnings=warning_items(decision.with_action(Action.WARN)),
    )
    if decision.redactors and not decision.blocked:
        if body.messages is not None and direction is Direction.INPUT:
            result.redacted_messages = redact_messages(body.messages, decision.redactors, context.state)
        else:
            result.redacted_text = redact_text(body.text or "", decision.redactors, context.state)
    return ok(result, rid)


@router.post("/guards/reload", response_model=Envelope[ReloadResult])
async def reload_policy(
    request: Request, _admin: Admin, guards: GuardsDep, rid: RequestId
) -> Envelope[ReloadResult]:
    """Read the policy file again, in every process. An invalid file is refused; the old policy stays."""
    audit(request, "guards.reload", str(guards.path) if guards.path else "default")
    try:
        policies, changed = await guards.reload_everywhere()
    except PolicyError as exc:
        raise ValidationFailed(str(exc), reason_code=ReasonCode.POLICY_INVALID) from None
    result = ReloadResult(
        source=policies.source,
        digest=policies.digest,
        changed=changed,
        policies=sorted(policies.policies),
        loaded_at=guards.loaded_at,
    )
    return ok(result, rid)


@router.post("/guards/{name}/check", response_model=Envelope[VerdictOut])
async def check_guard(
    name: str, body: CheckRequest, request: Request, principal: Checker, guards: GuardsDep, rid: RequestId
) -> Envelope[VerdictOut]:
    """One guard on one text, with its defaults or with ``options``."""
    options = body.options or {}
    if set(options) - PUBLIC_OPTIONS and not _may_see_everything(principal):
        raise Forbidden(f"only admins may set options other than {', '.join(sorted(PUBLIC_OPTIONS))}")
    direction = Direction(body.direction)
    context = GuardContext(
        text=body.text,
        direction=direction,
        messages=body.messages or [],
        sources=body.sources or [],
        route=request.url.path,
    )
    verdict = await guards.check_guard(name, context, options)
    record(request, direction, [verdict])
    return ok(VerdictOut.of(verdict), rid)


async def on_guard_blocked(request: Request, exc: Exception) -> Response:
    """A block answers 400: OpenAI's error format on ``/v1`` (``code`` is the first reason code), the
    envelope elsewhere; the audit row gets every reason code of the blocking verdicts."""
    assert isinstance(exc, GuardBlocked)
    rid = request_id(request)
    if request.url.path.startswith(OPENAI_PREFIX):
        body = exc.openai_body(rid)
    else:
        body = failure(exc.code, exc.message, rid, reason_codes=exc.reason_codes)
    request.state.reason_codes = exc.reason_codes
    return Response(orjson.dumps(body), status_code=exc.status_code, media_type="application/json")
