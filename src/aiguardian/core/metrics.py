"""Prometheus metrics. Counters and histograms live here; live figures (pool, breaker, queues) are read at
scrape time from sources each running app registers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

HTTP_REQUESTS = Counter(
    "aig_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "aig_http_request_duration_seconds",
    "Time from the first byte of a request to the end of its answer.",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CACHE_REQUESTS = Counter("aig_cache_requests_total", "Cache look-ups by tier and result.", ["tier", "result"])
CACHE_SHARED_UP = Gauge(
    "aig_cache_redis_up",
    "1 when the Redis cache tier is in use, 0 when it is down or unset.",
    multiprocess_mode="livemin",
)
GUARD_VERDICTS = Counter(
    "aig_guard_verdicts_total",
    "Guard verdicts by guard, direction (input, output, stream) and action; a stream counts its worst.",
    ["guard", "direction", "action"],
)
GUARD_LATENCY = Histogram(
    "aig_guard_duration_seconds",
    "Time one guard took for one check (each window of a stream is one check).",
    ["guard"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
GUARD_POLICY_RELOADS = Counter(
    "aig_guard_policy_reloads_total", "Guard policy reloads by result (applied, refused).", ["result"]
)

GaugeSource = Callable[[], Iterable[tuple[str, str, dict[str, str], float]]]


class LiveGauges(Collector):
    """Gauges computed at scrape time from named sources: ``(name, help, labels, value)`` tuples."""

    def __init__(self) -> None:
        self.sources: dict[str, GaugeSource] = {}

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for source in list(self.sources.values()):
            for name, doc, labels, value in source():
                family = families.get(name)
                if family is None:
                    family = families[name] = GaugeMetricFamily(name, doc, labels=list(labels))
                family.add_metric(list(labels.values()), value)
        yield from families.values()


LIVE = LiveGauges()
REGISTRY.register(LIVE)


def render(multiproc_dir: Path | None) -> bytes:
    """The exposition text. With several workers, counters and histograms are summed over all of them
    (prometheus_client's multiprocess mode); live gauges are those of the worker that answers."""
    if multiproc_dir is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    registry.register(LIVE)
    return generate_latest(registry)


def worker_exited(multiproc_dir: Path | None) -> None:
    if multiproc_dir is not None:
        multiprocess.mark_process_dead(os.getpid(), str(multiproc_dir))  # type: ignore[no-untyped-call]
