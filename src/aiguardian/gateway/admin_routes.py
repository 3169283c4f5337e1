"""``/api/v1/deployments``: admins manage where models are served. Changes apply at once in every process."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.http import RequestId, audit
from aiguardian.gateway.manage import DeploymentCreate, DeploymentOut, Deployments, DeploymentUpdate
from aiguardian.identity.auth import Admin

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])


async def get_deployments(request: Request) -> Deployments:
    deployments: Deployments = request.app.state.deployments
    return deployments


DeploymentsDep = Annotated[Deployments, Depends(get_deployments)]


@router.post("", status_code=201, response_model=Envelope[DeploymentOut])
async def create_deployment(
    body: DeploymentCreate, request: Request, _admin: Admin, service: DeploymentsDep, request_id: RequestId
) -> Envelope[DeploymentOut]:
    created = await service.create(body)
    audit(request, "deployment.create", created.id)
    return ok(created, request_id)


@router.get("", response_model=Envelope[list[DeploymentOut]])
async def list_deployments(
    _admin: Admin,
    service: DeploymentsDep,
    request_id: RequestId,
    model: Annotated[str | None, Query(max_length=200)] = None,
) -> Envelope[list[DeploymentOut]]:
    return ok(service.listing(model), request_id)


@router.get("/{deployment_id}", response_model=Envelope[DeploymentOut])
async def get_deployment(
    deployment_id: str, _admin: Admin, service: DeploymentsDep, request_id: RequestId
) -> Envelope[DeploymentOut]:
    return ok(service.get(deployment_id), request_id)


@router.patch("/{deployment_id}", response_model=Envelope[DeploymentOut])
async def update_deployment(
    deployment_id: str,
    body: DeploymentUpdate,
    request: Request,
    _admin: Admin,
    service: DeploymentsDep,
    request_id: RequestId,
) -> Envelope[DeploymentOut]:
    updated = await service.update(deployment_id, body)
    audit(request, "deployment.update", deployment_id)
    return ok(updated, request_id)


@router.post("/{deployment_id}/drain", response_model=Envelope[DeploymentOut])
async def drain_deployment(
    deployment_id: str, request: Request, _admin: Admin, service: DeploymentsDep, request_id: RequestId
) -> Envelope[DeploymentOut]:
    """No new requests go to it; those in flight finish. ``enable`` puts it back in service."""
    drained = await service.set_flags(deployment_id, "drain", draining=True)
    audit(request, "deployment.drain", deployment_id)
    return ok(drained, request_id)


@router.post("/{deployment_id}/disable", response_model=Envelope[DeploymentOut])
async def disable_deployment(
    deployment_id: str, request: Request, _admin: Admin, service: DeploymentsDep, request_id: RequestId
) -> Envelope[DeploymentOut]:
    disabled = await service.set_flags(deployment_id, "disable", enabled=False)
    audit(request, "deployment.disable", deployment_id)
    return ok(disabled, request_id)


@router.post("/{deployment_id}/enable", response_model=Envelope[DeploymentOut])
async def enable_deployment(
    deployment_id: str, request: Request, _admin: Admin, service: DeploymentsDep, request_id: RequestId
) -> Envelope[DeploymentOut]:
    """Back in service: enabled and no longer draining."""
    enabled = await service.set_flags(deployment_id, "enable", enabled=True, draining=False)
    audit(request, "deployment.enable", deployment_id)
    return ok(enabled, request_id)


@router.delete("/{deployment_id}", response_model=Envelope[dict[str, Any]])
async def delete_deployment(
    deployment_id: str, request: Request, _admin: Admin, service: DeploymentsDep, request_id: RequestId
) -> Envelope[dict[str, Any]]:
    await service.delete(deployment_id)
    audit(request, "deployment.delete", deployment_id)
    return ok({"deleted": True}, request_id)
