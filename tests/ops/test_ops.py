"""Health, readiness, status, memory and metrics."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families


async def test_healthz_is_alive(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_database_cache_and_migrations(client: httpx.AsyncClient, backend: str) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True
    database = body["components"]["database"]
    assert database["detail"]["migrations"]["up_to_date"] is True
    assert database["detail"]["backend"] == ("sqlite" if backend == "sqlite" else "postgresql")
    assert body["components"]["cache"]["state"] == "healthy"


async def test_readyz_is_503_when_migrations_are_behind(app: FastAPI, client: httpx.AsyncClient) -> None:
    from sqlalchemy import text

    from aiguardian.core.migrate import head_revision

    db = app.state.runtime.db
    async with db.transaction() as session:
        await session.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    try:
        response = await client.get("/readyz")
    finally:
        async with db.transaction() as session:
            await session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head_revision()})
    assert response.status_code == 503
    assert response.json()["components"]["database"]["detail"]["migrations"]["up_to_date"] is False


async def test_status_reports_every_component(client: httpx.AsyncClient, backend: str) -> None:
    body = (await client.get("/api/v1/status")).json()["data"]
    assert body["status"] == "healthy"
    assert body["version"]
    assert body["uptime_seconds"] >= 0
    components = body["components"]
    assert set(components) >= {"database", "cache", "audit"}
    assert components["database"]["state"] == "healthy"
    assert components["database"]["latency_ms"] >= 0
    assert components["database"]["detail"]["breaker"]["state"] == "closed"
    mode = components["cache"]["detail"]["mode"]
    assert mode == ("memory" if backend == "sqlite" else "memory+redis")
    if mode == "memory+redis":
        assert components["cache"]["detail"]["redis"]["state"] == "up"


async def test_status_turns_unhealthy_when_the_breaker_opens(app: FastAPI, client: httpx.AsyncClient) -> None:
    db = app.state.runtime.db
    for _ in range(db.breaker.threshold):
        db.breaker.record_failure("simulated outage")
    body = (await client.get("/api/v1/status")).json()["data"]
    assert body["status"] == "unhealthy"
    assert body["components"]["database"]["detail"]["breaker"]["state"] == "open"
    assert (await client.get("/readyz")).status_code == 503


async def test_metrics_parse_and_cover_the_required_families(client: httpx.AsyncClient) -> None:
    await client.get("/api/v1/status")
    await client.get("/api/v1/nope")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "aig_http_requests",
        "aig_http_request_duration_seconds",
        "aig_db_pool_size",
        "aig_db_pool_checked_out",
        "aig_circuit_breaker_state",
        "aig_cache_requests",
        "aig_audit_queue_depth",
    ):
        assert name in families, name
    samples = [
        s
        for s in families["aig_http_requests"].samples
        if s.labels.get("route") == "/api/v1/status" and s.labels.get("status") == "200"
    ]
    assert samples
    assert samples[0].value >= 1
    breaker = {
        s.labels["state"]: s.value
        for s in families["aig_circuit_breaker_state"].samples
        if s.labels["breaker"] == "database"
    }
    assert breaker["closed"] == 1.0


async def test_unmatched_routes_do_not_explode_metric_labels(client: httpx.AsyncClient) -> None:
    for n in range(5):
        await client.get(f"/random-{n}")
    text = (await client.get("/metrics")).text
    assert "/random-" not in text


async def test_memory_and_diagnostics_are_admin_only(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await client.get("/api/v1/memory")).status_code == 401
    memory = (await client.get("/api/v1/memory", headers=admin_headers)).json()["data"]
    assert memory["process_rss_bytes"] > 0
    assert memory["system_total_bytes"] >= memory["system_available_bytes"] > 0
    assert (await client.get("/api/v1/diagnostic/metrics")).status_code == 401
    figures = (await client.get("/api/v1/diagnostic/metrics", headers=admin_headers)).json()["data"]
    assert "aig_http_requests" in figures
    assert "aig_audit_queue_depth" in figures
