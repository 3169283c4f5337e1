"""Which deployment serves a request: weighted choice among the usable ones, lower priority first, then
the configured fallback models; each deployment behind its own circuit breaker (HealthGuard's passive
part: error rate and latency are tracked here and shown in ``/api/v1/status``)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from aiguardian.core.breaker import BreakerState, CircuitBreaker
from aiguardian.gateway.deployments import Deployment


@dataclass
class DeploymentHealth:
    breaker: CircuitBreaker
    requests: int = 0
    failures: int = 0
    latency_ms_ewma: float | None = None
    last_error: str | None = None
    last_success_at: float | None = None
    rate_limited_until: float | None = None  # time.monotonic() before which the provider asked us to wait
    recent: list[bool] = field(default_factory=list)

    def observe(self, ok: bool, latency_ms: float | None) -> None:
        self.requests += 1
        self.failures += not ok
        self.recent.append(ok)
        if len(self.recent) > 100:
            del self.recent[: len(self.recent) - 100]
        if ok:
            self.last_success_at = time.time()
        if latency_ms is not None:
            previous = self.latency_ms_ewma
            self.latency_ms_ewma = latency_ms if previous is None else previous * 0.8 + latency_ms * 0.2

    @property
    def error_rate(self) -> float:
        return 0.0 if not self.recent else 1 - sum(self.recent) / len(self.recent)


class Router:
    def __init__(
        self,
        deployments: list[Deployment],
        fallbacks: dict[str, list[str]],
        *,
        breaker_threshold: int,
        breaker_reset_seconds: float,
    ) -> None:
        self._threshold = breaker_threshold
        self._reset = breaker_reset_seconds
        self.fallbacks = fallbacks
        self.deployments: dict[str, Deployment] = {}
        self.health: dict[str, DeploymentHealth] = {}
        self._by_model: dict[str, list[Deployment]] = {}
        for deployment in deployments:
            self.add(deployment)

    def add(self, deployment: Deployment) -> None:
        self.deployments[deployment.id] = deployment
        self.health.setdefault(
            deployment.id,
            DeploymentHealth(CircuitBreaker(f"deployment:{deployment.id}", self._threshold, self._reset)),
        )
        self._index()

    def remove(self, deployment_id: str) -> None:
        self.deployments.pop(deployment_id, None)
        self.health.pop(deployment_id, None)
        self._index()

    def _index(self) -> None:
        by_model: dict[str, list[Deployment]] = {}
        for deployment in self.deployments.values():
            by_model.setdefault(deployment.model, []).append(deployment)
        self._by_model = by_model

    def models(self) -> list[str]:
        return sorted(m for m, ds in self._by_model.items() if any(d.usable for d in ds))

    def knows(self, model: str) -> bool:
        return model in self._by_model

    def caches(self, model: str) -> bool:
        """Whether answers for ``model`` go through the answer cache unless a request says otherwise."""
        return any(d.cache for d in self._by_model.get(model, []))

    def plan(self, model: str) -> list[Deployment]:
        """The deployments to try, in order: this model's, by priority then weighted-random, healthy ones
        first; then each fallback model's the same way."""
        ordered: list[Deployment] = []
        for name in [model, *self.fallbacks.get(model, [])]:
            ordered += self._ordered(name)
        return ordered

    def _ordered(self, model: str) -> list[Deployment]:
        usable = [d for d in self._by_model.get(model, []) if d.usable]
        healthy = [d for d in usable if self.health[d.id].breaker.state is not BreakerState.OPEN]
        resting = [d for d in usable if d not in healthy]
        return self._weighted(healthy) + self._weighted(resting)

    @staticmethod
    def _weighted(deployments: list[Deployment]) -> list[Deployment]:
        result: list[Deployment] = []
        for priority in sorted({d.priority for d in deployments}):
            group = [d for d in deployments if d.priority == priority]
            while group:
                if len(group) == 1:
                    result.append(group.pop())
                    break
                pick = random.choices(range(len(group)), weights=[d.weight for d in group])[0]
                result.append(group.pop(pick))
        return result
