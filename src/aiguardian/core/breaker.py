"""A circuit breaker for one dependency.

Written here rather than taken from a library: the ones on PyPI (pybreaker, aiobreaker, purgatory) either
block the event loop, keep their state behind storage we do not want on the hot path, or do not expose the
state and last error we report in ``/readyz``, ``/api/v1/status`` and ``/metrics``. This one is a few lines
of plain state: consecutive failures open it, a single probe is let through after ``reset_seconds``, and a
successful probe closes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """Raised instead of calling a dependency that is known to be down."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._open_seconds = reset_seconds
        self._probing = False
        self.last_error: str | None = None
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._open_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def before_call(self) -> None:
        """Raise ``CircuitOpenError`` unless this call may go through (closed, or the one half-open probe)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return
        raise CircuitOpenError(f"{self.name} circuit is open: {self.last_error or 'recent failures'}")

    def open_for(self, seconds: float, reason: str) -> None:
        """Open now for ``seconds`` (say, an upstream's ``Retry-After``), whatever the failure count."""
        if self._opened_at is None:
            self.times_opened += 1
        self.last_error = reason
        self._opened_at = self._clock()
        self._open_seconds = max(seconds, 0.0)
        self._probing = False

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._open_seconds = self.reset_seconds
        self._probing = False
        self.last_error = None

    def record_failure(self, error: BaseException | str) -> None:
        self.last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"[:300]
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            if self._opened_at is None:
                self.times_opened += 1
            self._opened_at = self._clock()
            self._open_seconds = self.reset_seconds
        self._probing = False

    def release_probe(self) -> None:
        """The probe ended without saying anything about the dependency (say, a caller's own error)."""
        self._probing = False
