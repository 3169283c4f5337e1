from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.health import Probe
from aiguardian.core.http import RequestId
from aiguardian.core.metrics import render as render_metrics
from aiguardian.core.runtime import RuntimeDep
from aiguardian.identity.auth import Admin
from aiguardian.ops import service
from aiguardian.ops.schemas import MemoryReport, Readiness, Status

router = APIRouter(tags=["operations"])


def _probes(request: Request) -> list[Probe]:
    probes: list[Probe] = request.app.state.probes
    return probes


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about its dependencies (see ``/readyz``)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> Response:
    report = await service.readiness(_probes(request))
    return Response(
        report.model_dump_json(), status_code=200 if report.ready else 503, media_type="application/json"
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(render_metrics(runtime.settings.metrics_multiproc_dir), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/status", response_model=Envelope[Status])
async def status(request: Request, runtime: RuntimeDep, request_id: RequestId) -> Envelope[Status]:
    return ok(await service.status(_probes(request), runtime.uptime_seconds), request_id)


@router.get("/api/v1/memory", response_model=Envelope[MemoryReport])
async def memory(request_id: RequestId, _admin: Admin) -> Envelope[MemoryReport]:
    return ok(service.memory(), request_id)


@router.get("/api/v1/diagnostic/metrics", response_model=Envelope[dict[str, Any]])
async def diagnostic_metrics(request_id: RequestId, _admin: Admin) -> Envelope[dict[str, Any]]:
    return ok(service.metrics_as_json(), request_id)
