"""Deployments: where a public model name is actually served (provider, base URL, key, weight, limits)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from aiguardian.settings import Settings, secret_from_env

ProviderName = Literal["openai", "anthropic", "demo"]
DEMO_MODEL = "aiguardian-demo"


class DeploymentSpec(BaseModel):
    """One entry of ``deployments:`` in the YAML config (or a body of ``POST /api/v1/deployments``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200, description="The name clients ask for.")
    provider: ProviderName = "openai"
    base_url: HttpUrl | None = None
    api_key_env: str | None = Field(None, max_length=200, description="Environment variable holding the key.")
    upstream_model: str | None = Field(
        None, max_length=200, description="The provider's name; default `model`."
    )
    weight: float = Field(1.0, gt=0, le=1000)
    priority: int = Field(0, ge=0, le=100, description="Lower is tried first; higher ones are fallbacks.")
    timeout: float = Field(60.0, gt=0, le=3600)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    context_window: int | None = Field(None, ge=1)
    cache: bool = Field(
        False, description="Serve repeated identical requests for this model from the answer cache."
    )
    id: str | None = Field(None, max_length=64)


@dataclass
class Deployment:
    id: str
    model: str
    provider: ProviderName
    base_url: str
    api_key: str | None
    upstream_model: str
    weight: float
    priority: int
    timeout: float
    rpm: int | None = None
    tpm: int | None = None
    context_window: int | None = None
    cache: bool = False
    enabled: bool = True
    draining: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.enabled and not self.draining


DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "demo": "",
}


def from_spec(spec: DeploymentSpec) -> Deployment:
    return Deployment(
        id=spec.id or uuid.uuid4().hex[:12],
        model=spec.model,
        provider=spec.provider,
        base_url=str(spec.base_url).rstrip("/") if spec.base_url else DEFAULT_BASE_URLS[spec.provider],
        api_key=secret_from_env(spec.api_key_env) if spec.api_key_env else None,
        upstream_model=spec.upstream_model or spec.model,
        weight=spec.weight,
        priority=spec.priority,
        timeout=spec.timeout,
        rpm=spec.rpm,
        tpm=spec.tpm,
        context_window=spec.context_window,
        cache=spec.cache,
    )


def configured(settings: Settings) -> list[Deployment]:
    deployments = [from_spec(DeploymentSpec.model_validate(raw)) for raw in settings.deployments]
    if settings.demo_model_enabled and not any(d.model == DEMO_MODEL for d in deployments):
        deployments.append(
            Deployment(
                id="demo",
                model=DEMO_MODEL,
                provider="demo",
                base_url="",
                api_key=None,
                upstream_model=DEMO_MODEL,
                weight=1.0,
                priority=0,
                timeout=10.0,
                context_window=8192,
            )
        )
    return deployments
