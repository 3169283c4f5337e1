"""What one running app holds: settings, secrets, database, cache. Stored on ``app.state.runtime``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from aiguardian.core.bus import EventBus
from aiguardian.core.cache import TieredCache
from aiguardian.core.datadir import Secrets
from aiguardian.core.db import Database
from aiguardian.core.ratelimit import RateLimiter
from aiguardian.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    secrets: Secrets
    db: Database
    cache: TieredCache
    bus: EventBus
    limiter: RateLimiter
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _runtime_dependency(request: Request) -> Runtime:
    # Dependencies are async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    return get_runtime(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]
