"""Realtime: the events of :mod:`aiguardian.core.events`, delivered live over WebSocket and SSE."""

from __future__ import annotations

from collections.abc import Iterable

from aiguardian.core import metrics
from aiguardian.core.bus import EventBus
from aiguardian.identity.service import Identity
from aiguardian.realtime.hub import Hub
from aiguardian.settings import Settings


def start_hub(settings: Settings, bus: EventBus, identity: Identity) -> Hub:
    """The hub of this process, listening on ``bus``, its figures among the live gauges of /metrics."""
    hub = Hub(
        bus,
        identity,
        queue_max=settings.realtime_send_queue,
        max_connections=settings.realtime_max_connections,
        ping_seconds=settings.realtime_ping_seconds,
    )
    hub.start()
    metrics.LIVE.sources[f"realtime-{id(hub)}"] = lambda: _gauges(hub)
    return hub


async def stop_hub(hub: Hub) -> None:
    metrics.LIVE.sources.pop(f"realtime-{id(hub)}", None)
    await hub.close()


def _gauges(hub: Hub) -> Iterable[tuple[str, str, dict[str, str], float]]:
    yield (
        "aig_realtime_connections",
        "WebSocket and SSE subscribers connected to this process.",
        {},
        hub.connections,
    )
    yield "aig_realtime_deliveries", "Events queued for subscribers by this process.", {}, hub.delivered
    yield (
        "aig_realtime_slow_consumers",
        "Subscribers this process disconnected for not reading their events fast enough.",
        {},
        hub.slow_consumers,
    )
