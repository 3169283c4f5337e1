"""TokenGuard among the verdicts. Its checks (context window, budgets: ``usage/``) stay where they run, in the
gateway's admission before any other guard; this module reports their outcome as the ``token`` guard's
verdict, so the audit row and the guard metrics show them with the content guards."""

from __future__ import annotations

import time

from starlette.requests import Request

from aiguardian.core import metrics
from aiguardian.core.errors import AIGError
from aiguardian.guards.base import Action, Direction, Verdict
from aiguardian.guards.chat import record

NAME = "token"
SOFT_BUDGET = "TOKEN_BUDGET_SOFT_LIMIT"


def report(
    request: Request, started: float, *, warnings: list[str] | None = None, error: AIGError | None = None
) -> None:
    """The token guard's verdict for this request: block (the refusal's reason code), warn (a soft budget
    is exceeded) or allow. ``started`` is the ``perf_counter`` when admission began."""
    if error is not None:
        verdict = Verdict(NAME, Action.BLOCK, 1.0, [error.reason_code.value])
    elif warnings:
        verdict = Verdict(NAME, Action.WARN, 1.0, [SOFT_BUDGET])
    else:
        verdict = Verdict(NAME, Action.ALLOW)
    verdict.elapsed_ms = (time.perf_counter() - started) * 1000
    record(request, Direction.INPUT, [verdict])
    metrics.GUARD_VERDICTS.labels(NAME, Direction.INPUT.value, verdict.action.value).inc()
    metrics.GUARD_LATENCY.labels(NAME).observe(verdict.elapsed_ms / 1000)
