from __future__ import annotations

import pytest

from aiguardian.core.breaker import BreakerState, CircuitBreaker, CircuitOpenError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker("db", threshold=3, reset_seconds=5, clock=clock), clock


def test_opens_after_threshold_consecutive_failures() -> None:
    breaker, _ = make()
    for _ in range(2):
        breaker.record_failure("x")
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure("x")
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


def test_success_resets_the_count() -> None:
    breaker, _ = make()
    breaker.record_failure("x")
    breaker.record_failure("x")
    breaker.record_success()
    breaker.record_failure("x")
    assert breaker.state is BreakerState.CLOSED


def test_half_open_lets_one_probe_through() -> None:
    breaker, clock = make()
    for _ in range(3):
        breaker.record_failure("x")
    clock.now = 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()
    with pytest.raises(CircuitOpenError):
        breaker.before_call()


def test_failed_probe_reopens_and_successful_probe_closes() -> None:
    breaker, clock = make()
    for _ in range(3):
        breaker.record_failure("x")
    clock.now = 5.0
    breaker.before_call()
    breaker.record_failure("still down")
    assert breaker.state is BreakerState.OPEN
    assert breaker.times_opened == 1
    clock.now = 10.0
    breaker.before_call()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()
