"""``/api/v1/usage`` and ``/api/v1/budgets``: members see their own, admins everything."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.errors import BadRequest, Forbidden
from aiguardian.core.http import RequestId, audit
from aiguardian.identity.auth import Admin, IdentityDep, Reader
from aiguardian.identity.service import Principal
from aiguardian.usage.schemas import BudgetCreate, BudgetList, BudgetOut, BudgetUpdate, UsageSummary
from aiguardian.usage.service import UsageService

usage_router = APIRouter(prefix="/api/v1/usage", tags=["usage"])
budgets_router = APIRouter(prefix="/api/v1/budgets", tags=["budgets"])


async def get_usage(request: Request) -> UsageService:
    service: UsageService = request.app.state.usage
    return service


UsageDep = Annotated[UsageService, Depends(get_usage)]


def _sees_all(principal: Principal) -> bool:
    return principal.is_admin and "admin" in principal.scopes


@usage_router.get("", response_model=Envelope[UsageSummary])
async def usage_summary(
    principal: Reader,
    usage: UsageDep,
    request_id: RequestId,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: Annotated[str | None, Query(max_length=32)] = None,
) -> Envelope[UsageSummary]:
    if not _sees_all(principal):
        if user_id not in (None, principal.user_id):
            raise Forbidden("only admins see other users' usage")
        user_id = principal.user_id
    return ok(await usage.summary(user_id=user_id, since=since, until=until), request_id)


@budgets_router.post("", status_code=201, response_model=Envelope[BudgetOut])
async def create_budget(
    body: BudgetCreate,
    request: Request,
    admin: Admin,
    usage: UsageDep,
    identity: IdentityDep,
    request_id: RequestId,
) -> Envelope[BudgetOut]:
    owner: str | None = None
    if body.scope == "user":
        owner = (await identity.get_user(body.subject_id or "")).id
    elif body.scope == "key":
        owner = (await identity.get_key(body.subject_id or "", admin)).user_id
    audit(request, "budget.create")
    return ok(await usage.create_budget(body, owner), request_id)


@budgets_router.get("", response_model=Envelope[BudgetList])
async def list_budgets(principal: Reader, usage: UsageDep, request_id: RequestId) -> Envelope[BudgetList]:
    visible_to = None if _sees_all(principal) else principal.user_id
    return ok(BudgetList(items=await usage.list_budgets(visible_to)), request_id)


@budgets_router.get("/{budget_id}", response_model=Envelope[BudgetOut])
async def get_budget(
    budget_id: str, principal: Reader, usage: UsageDep, request_id: RequestId
) -> Envelope[BudgetOut]:
    visible_to = None if _sees_all(principal) else principal.user_id
    return ok(await usage.get_budget(budget_id, visible_to), request_id)


@budgets_router.patch("/{budget_id}", response_model=Envelope[BudgetOut])
async def update_budget(
    budget_id: str,
    body: BudgetUpdate,
    request: Request,
    _admin: Admin,
    usage: UsageDep,
    request_id: RequestId,
) -> Envelope[BudgetOut]:
    if not body.model_fields_set:
        raise BadRequest("nothing to change")
    audit(request, "budget.update", budget_id)
    return ok(await usage.update_budget(budget_id, body), request_id)


@budgets_router.delete("/{budget_id}", response_model=Envelope[BudgetOut])
async def delete_budget(
    budget_id: str, request: Request, _admin: Admin, usage: UsageDep, request_id: RequestId
) -> Envelope[BudgetOut]:
    audit(request, "budget.delete", budget_id)
    return ok(await usage.delete_budget(budget_id), request_id)
