from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from aiguardian.audit import service
from aiguardian.audit.schemas import AuditFilters, AuditPage, AuditStatus
from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.http import RequestId
from aiguardian.core.runtime import RuntimeDep
from aiguardian.identity.auth import Admin

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=Envelope[AuditPage])
async def list_audit(
    runtime: RuntimeDep,
    request_id: RequestId,
    _admin: Admin,
    status: AuditStatus | None = None,
    reason_code: Annotated[str | None, Query(max_length=128)] = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    route: Annotated[str | None, Query(max_length=512)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Envelope[AuditPage]:
    filters = AuditFilters(
        status=status,
        reason_code=reason_code,
        actor=actor,
        action=action,
        route=route,
        since=since,
        until=until,
    )
    capped = min(limit, runtime.settings.audit_page_max)
    return ok(await service.list_page(runtime.db, filters, capped, cursor), request_id)
