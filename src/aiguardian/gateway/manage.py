"""Deployments managed through the admin API, and HealthGuard's first part (each deployment's health).

The table holds the admin-made deployments; the config file's stay read-only. Every change is published on
the bus (``deployments.changed``) and each process reloads its Router's managed deployments at once, keeping
each deployment's health (breaker, error rate, latency) across reloads. A watcher publishes
``deployment.health`` when a deployment's state changes and, when ``deployment_probe_interval_seconds`` is
set, probes OpenAI-compatible deployments (``GET {base_url}/models``) and feeds their breakers.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from aiguardian.core.breaker import BreakerState
from aiguardian.core.bus import EventBus
from aiguardian.core.clock import iso, utc_now
from aiguardian.core.db import Database
from aiguardian.core.errors import Conflict, NotFound, ValidationFailed
from aiguardian.core.health import ComponentHealth, HealthState, Probe
from aiguardian.gateway.deployments import Deployment, DeploymentSpec, ProviderName, from_spec
from aiguardian.gateway.models import ManagedDeployment
from aiguardian.gateway.router import DeploymentHealth, Router
from aiguardian.settings import Settings

log = structlog.get_logger("aiguardian.gateway")

CHANGED = "deployments.changed"
HEALTH = "deployment.health"

DeploymentState = Literal["healthy", "degraded", "unhealthy", "draining", "disabled"]
Source = Literal["config", "api"]

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,199}$"
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# An admin could otherwise name the server's own secrets as a "provider key" and have the gateway send
# them to a base URL of their choosing.
_RESERVED_ENV = re.compile(r"^(AIG_|DATABASE_URL$|REDIS_URL$|API_PORT$)", re.IGNORECASE)
_WATCH_SECONDS = 1.0


class DeploymentCreate(DeploymentSpec):
    """``POST /api/v1/deployments``: the config file's fields, with names safe for URLs and the environment."""

    id: str | None = Field(None, pattern=_ID, description="Default: generated.")
    api_key_env: str | None = Field(
        None, pattern=_ENV_NAME, description="Environment variable holding the key (never the key itself)."
    )


class DeploymentUpdate(BaseModel):
    """``PATCH /api/v1/deployments/{id}``: only the fields sent change; null clears an optional one."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1, max_length=200)
    provider: ProviderName | None = None
    base_url: HttpUrl | None = None
    api_key_env: str | None = Field(None, pattern=_ENV_NAME)
    upstream_model: str | None = Field(None, max_length=200)
    weight: float | None = Field(None, gt=0, le=1000)
    priority: int | None = Field(None, ge=0, le=100)
    timeout: float | None = Field(None, gt=0, le=3600)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    context_window: int | None = Field(None, ge=1)
    cache: bool | None = None


class HealthOut(BaseModel):
    breaker: str
    consecutive_failures: int
    times_opened: int
    error_rate: float
    latency_ms: float | None = Field(description="Exponentially weighted moving average.")
    requests: int
    failures: int
    last_error: str | None
    last_success_at: str | None


class DeploymentOut(BaseModel):
    id: str
    source: Source
    model: str
    provider: str
    base_url: str
    api_key_env: str | None
    api_key_set: bool = Field(description="Whether the variable named by `api_key_env` holds a key here.")
    upstream_model: str
    weight: float
    priority: int
    timeout: float
    rpm: int | None
    tpm: int | None
    context_window: int | None
    cache: bool
    enabled: bool
    draining: bool
    state: DeploymentState
    health: HealthOut | None
    created_at: str | None
    updated_at: str | None


def state_of(deployment: Deployment, health: DeploymentHealth | None) -> DeploymentState:
    if not deployment.enabled:
        return "disabled"
    if deployment.draining:
        return "draining"
    if health is None:
        return "healthy"
    breaker = health.breaker.state
    if breaker is BreakerState.OPEN:
        return "unhealthy"
    if breaker is BreakerState.HALF_OPEN or health.error_rate > 0.5:
        return "degraded"
    return "healthy"


def health_out(health: DeploymentHealth) -> HealthOut:
    return HealthOut(
        breaker=health.breaker.state.value,
        consecutive_failures=health.breaker.consecutive_failures,
        times_opened=health.breaker.times_opened,
        error_rate=round(health.error_rate, 4),
        latency_ms=None if health.latency_ms_ewma is None else round(health.latency_ms_ewma, 3),
        requests=health.requests,
        failures=health.failures,
        last_error=health.last_error or health.breaker.last_error,
        last_success_at=(
            iso(datetime.fromtimestamp(health.last_success_at, UTC)) if health.last_success_at else None
        ),
    )


def _spec_of(row: ManagedDeployment) -> DeploymentCreate:
    return DeploymentCreate.model_validate(
        {
            "id": row.id,
            "model": row.model,
            "provider": row.provider,
            "base_url": row.base_url,
            "api_key_env": row.api_key_env,
            "upstream_model": row.upstream_model,
            "weight": row.weight,
            "priority": row.priority,
            "timeout": row.timeout,
            "rpm": row.rpm,
            "tpm": row.tpm,
            "context_window": row.context_window,
            "cache": row.cache,
        }
    )


def _columns(spec: DeploymentSpec) -> dict[str, Any]:
    values = spec.model_dump(exclude={"id"})
    values["base_url"] = str(spec.base_url) if spec.base_url else None
    return values


def _invalid(exc: ValidationError) -> ValidationFailed:
    details = [
        {
            "field": ".".join(["body", *(str(p) for p in e["loc"])]),
            "message": e["msg"],
            "type": e["type"],
        }
        for e in exc.errors()
    ]
    first = details[0]
    return ValidationFailed(f"{first['field']}: {first['message']}", details=details)


@dataclass
class _Managed:
    deployment: Deployment
    api_key_env: str | None
    created_at: datetime
    updated_at: datetime


class Deployments:
    """The admin API's service. ``start`` loads the table into the Router and starts the health watcher."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: EventBus,
        router: Router,
        *,
        configured: list[Deployment],
        providers: set[str],
    ) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.router = router
        self.providers = providers
        self._config = {d.id: d for d in configured}
        # configured() keeps the file's order and appends only the demo model, so the two line up.
        self._config_key_env = {
            d.id: raw.get("api_key_env")
            for raw, d in zip(settings.deployments, configured, strict=False)
            if isinstance(raw, dict)
        }
        self._managed: dict[str, _Managed] = {}
        self._reload_lock = asyncio.Lock()
        self._states: dict[str, DeploymentState] = {}
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        bus.on(CHANGED, self._on_changed)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="deployment-health")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _on_changed(self, _topic: str, _payload: dict[str, Any]) -> None:
        await self.reload()

    async def reload(self) -> None:
        """Make the Router's managed deployments match the table. ``Router.add`` keeps a known id's health."""
        async with self._reload_lock:
            async with self.db.session() as session:
                rows = list((await session.scalars(select(ManagedDeployment))).all())
            managed: dict[str, _Managed] = {}
            for row in rows:
                if row.id in self._config:
                    log.warning("managed deployment shadows a configured one; ignored", deployment=row.id)
                    continue
                try:
                    deployment = from_spec(_spec_of(row))
                except ValidationError:
                    log.warning("managed deployment is not valid; ignored", deployment=row.id)
                    continue
                deployment.enabled = row.enabled
                deployment.draining = row.draining
                managed[row.id] = _Managed(deployment, row.api_key_env, row.created_at, row.updated_at)
            for gone in self._managed.keys() - managed.keys():
                self.router.remove(gone)
            for item in managed.values():
                self.router.add(item.deployment)
            self._managed = managed

    async def _changed(self, deployment_id: str, action: str) -> None:
        await self.bus.publish(CHANGED, {"id": deployment_id, "action": action})

    # -- reading -------------------------------------------------------------------------------------------

    def source(self, deployment_id: str) -> Source:
        return "config" if deployment_id in self._config else "api"

    def describe(self, deployment: Deployment) -> DeploymentOut:
        health = self.router.health.get(deployment.id)
        managed = self._managed.get(deployment.id)
        return DeploymentOut(
            id=deployment.id,
            source=self.source(deployment.id),
            model=deployment.model,
            provider=deployment.provider,
            base_url=deployment.base_url,
            api_key_env=managed.api_key_env if managed else self._config_key_env.get(deployment.id),
            api_key_set=deployment.api_key is not None,
            upstream_model=deployment.upstream_model,
            weight=deployment.weight,
            priority=deployment.priority,
            timeout=deployment.timeout,
            rpm=deployment.rpm,
            tpm=deployment.tpm,
            context_window=deployment.context_window,
            cache=deployment.cache,
            enabled=deployment.enabled,
            draining=deployment.draining,
            state=state_of(deployment, health),
            health=health_out(health) if health else None,
            created_at=iso(managed.created_at) if managed else None,
            updated_at=iso(managed.updated_at) if managed else None,
        )

    def listing(self, model: str | None = None) -> list[DeploymentOut]:
        deployments = sorted(self.router.deployments.values(), key=lambda d: (d.model, d.priority, d.id))
        return [self.describe(d) for d in deployments if model is None or d.model == model]

    def get(self, deployment_id: str) -> DeploymentOut:
        deployment = self.router.deployments.get(deployment_id)
        if deployment is None:
            raise NotFound("no such deployment")
        return self.describe(deployment)

    # -- changing ------------------------------------------------------------------------------------------

    def _check(self, spec: DeploymentSpec) -> None:
        if spec.provider not in self.providers:
            raise ValidationFailed(
                f"body.provider: no `{spec.provider}` provider in this build",
                details=[
                    {"field": "body.provider", "message": "provider not available", "type": "value_error"}
                ],
            )
        if spec.api_key_env and _RESERVED_ENV.match(spec.api_key_env):
            raise ValidationFailed(
                "body.api_key_env: names one of AIGuardian's own settings",
                details=[{"field": "body.api_key_env", "message": "reserved name", "type": "value_error"}],
            )

    async def create(self, spec: DeploymentCreate) -> DeploymentOut:
        self._check(spec)
        deployment_id = spec.id or uuid.uuid4().hex[:12]
        if deployment_id in self._config:
            raise Conflict(f"a deployment `{deployment_id}` is declared in the config file")
        now = utc_now()
        row = ManagedDeployment(
            id=deployment_id, **_columns(spec), enabled=True, draining=False, created_at=now, updated_at=now
        )
        try:
            async with self.db.transaction() as session:
                session.add(row)
        except IntegrityError:
            raise Conflict(f"a deployment `{deployment_id}` already exists") from None
        await self._changed(deployment_id, "create")
        return self.get(deployment_id)

    async def _row(self, session: Any, deployment_id: str) -> ManagedDeployment:
        if deployment_id in self._config:
            raise Conflict("this deployment is declared in the config file; change it there")
        row: ManagedDeployment | None = await session.get(ManagedDeployment, deployment_id)
        if row is None:
            raise NotFound("no such deployment")
        return row

    async def update(self, deployment_id: str, changes: DeploymentUpdate) -> DeploymentOut:
        sent = changes.model_dump(exclude_unset=True)
        async with self.db.transaction() as session:
            row = await self._row(session, deployment_id)
            merged = {**_spec_of(row).model_dump(), **sent}
            try:
                spec = DeploymentCreate.model_validate(merged)
            except ValidationError as exc:
                raise _invalid(exc) from None
            self._check(spec)
            for name, value in _columns(spec).items():
                setattr(row, name, value)
            row.updated_at = utc_now()
        await self._changed(deployment_id, "update")
        return self.get(deployment_id)

    async def set_flags(
        self, deployment_id: str, action: str, *, enabled: bool | None = None, draining: bool | None = None
    ) -> DeploymentOut:
        async with self.db.transaction() as session:
            row = await self._row(session, deployment_id)
            if enabled is not None:
                row.enabled = enabled
            if draining is not None:
                row.draining = draining
            row.updated_at = utc_now()
        await self._changed(deployment_id, action)
        return self.get(deployment_id)

    async def delete(self, deployment_id: str) -> None:
        async with self.db.transaction() as session:
            await self._row(session, deployment_id)
            await session.execute(delete(ManagedDeployment).where(ManagedDeployment.id == deployment_id))
        await self._changed(deployment_id, "delete")

    # -- health --------------------------------------------------------------------------------------------

    def probe(self) -> Probe:
        """The ``deployments`` component of ``/api/v1/status``. Public, so it leaves out errors and URLs."""

        async def check() -> ComponentHealth:
            rows = []
            in_service: list[DeploymentState] = []
            for item in self.listing():
                rows.append(
                    {
                        "id": item.id,
                        "model": item.model,
                        "provider": item.provider,
                        "source": item.source,
                        "state": item.state,
                        "breaker": item.health.breaker if item.health else None,
                        "error_rate": item.health.error_rate if item.health else 0.0,
                        "latency_ms": item.health.latency_ms if item.health else None,
                        "requests": item.health.requests if item.health else 0,
                    }
                )
                if item.state not in ("draining", "disabled"):
                    in_service.append(item.state)
            state: HealthState = "healthy"
            if in_service and all(s == "unhealthy" for s in in_service):
                state = "unhealthy"
            elif any(s != "healthy" for s in in_service):
                state = "degraded"
            return ComponentHealth(state, None, {"deployments": rows})

        return Probe("deployments", check, required_for_ready=False)

    async def _watch(self) -> None:
        interval = self.settings.deployment_probe_interval_seconds
        next_probe = time.monotonic()
        while True:
            try:
                if interval > 0 and time.monotonic() >= next_probe:
                    next_probe = time.monotonic() + interval
                    await self.probe_all()
                await self.publish_changes()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deployment health watcher failed")
            await asyncio.sleep(min(_WATCH_SECONDS, interval) if interval > 0 else _WATCH_SECONDS)

    async def publish_changes(self) -> None:
        """Publish ``deployment.health`` for each deployment whose state changed since the last look."""
        seen: dict[str, DeploymentState] = {}
        for deployment in list(self.router.deployments.values()):
            state = state_of(deployment, self.router.health.get(deployment.id))
            seen[deployment.id] = state
            previous = self._states.get(deployment.id)
            if previous is not None and previous != state:
                health = self.router.health.get(deployment.id)
                await self.bus.publish(
                    HEALTH,
                    {
                        "id": deployment.id,
                        "model": deployment.model,
                        "state": state,
                        "previous": previous,
                        "error_rate": round(health.error_rate, 4) if health else 0.0,
                        "at": iso(utc_now()),
                    },
                )
        self._states = seen

    async def probe_all(self) -> None:
        targets = [
            d for d in self.router.deployments.values() if d.provider == "openai" and d.enabled and d.base_url
        ]
        await asyncio.gather(*(self._probe_one(d) for d in targets))

    async def _probe_one(self, deployment: Deployment) -> None:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {deployment.api_key}"} if deployment.api_key else {}
        timeout = aiohttp.ClientTimeout(total=min(deployment.timeout, 10.0))
        error: str | None = None
        try:
            async with self._http.get(
                deployment.base_url + "/models", headers=headers, timeout=timeout
            ) as response:
                if response.status >= 500 or response.status == 429:
                    error = f"{response.status}: active probe failed"
                elif response.status >= 400:
                    # The upstream is up but refuses the probe (a key without model listing, say).
                    return
        except TimeoutError:
            error = "504: active probe timed out"
        except aiohttp.ClientError as exc:
            error = f"502: active probe could not connect ({type(exc).__name__})"
        health = self.router.health.get(deployment.id)
        if health is None:  # removed while the probe ran
            return
        if error is None:
            health.breaker.record_success()
        else:
            health.last_error = error
            health.breaker.record_failure(error)
