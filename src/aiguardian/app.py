"""``create_app(settings)``: wires the features, the middleware and the lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

import structlog
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from aiguardian import __version__
from aiguardian.audit import service as audit_service
from aiguardian.audit.routes import router as audit_router
from aiguardian.audit.writer import AuditWriter
from aiguardian.content.routes import router as posts_router
from aiguardian.conversations.chat import Summaries
from aiguardian.conversations.routes import chat_router as conversation_chat_router
from aiguardian.conversations.routes import router as conversations_router
from aiguardian.core import events, metrics, migrate
from aiguardian.core.bus import build_bus
from aiguardian.core.cache import build_cache
from aiguardian.core.datadir import prepare_data_dir
from aiguardian.core.db import Database
from aiguardian.core.errors import AIGError, AuditBacklog
from aiguardian.core.http import install_error_handlers
from aiguardian.core.logging import configure_logging
from aiguardian.core.middleware import RequestContextMiddleware, RequestRecord
from aiguardian.core.ratelimit import RateLimiter
from aiguardian.core.runtime import Runtime
from aiguardian.gateway import deployments as gateway_deployments
from aiguardian.gateway.admin_routes import router as deployments_router
from aiguardian.gateway.cache import AnswerCache
from aiguardian.gateway.manage import Deployments
from aiguardian.gateway.providers.anthropic import AnthropicProvider
from aiguardian.gateway.providers.base import Provider
from aiguardian.gateway.providers.demo import DemoProvider
from aiguardian.gateway.providers.openai import OpenAIProvider
from aiguardian.gateway.router import Router
from aiguardian.gateway.routes import router as gateway_router
from aiguardian.gateway.service import Gateway
from aiguardian.guards.pipeline import GuardBlocked
from aiguardian.guards.routes import on_guard_blocked
from aiguardian.guards.routes import router as guards_router
from aiguardian.guards.service import GuardService
from aiguardian.identity.bootstrap import ensure_first_admin
from aiguardian.identity.routes import auth_router, keys_router, users_router
from aiguardian.identity.service import Identity
from aiguardian.ops.probes import cache_probe, database_probe
from aiguardian.ops.routes import router as ops_router
from aiguardian.realtime import start_hub, stop_hub
from aiguardian.realtime.routes import router as realtime_router
from aiguardian.settings import Settings, load_settings
from aiguardian.usage.routes import budgets_router, usage_router
from aiguardian.usage.service import UsageService

log = structlog.get_logger("aiguardian")

_BREAKER_STATES = ("closed", "half_open", "open")


def _live_gauges(runtime: Runtime, writer: AuditWriter) -> Iterable[tuple[str, str, dict[str, str], float]]:
    db = runtime.db
    pool = db.pool_stats()
    yield "aig_db_pool_size", "Database connections held open by the pool.", {}, pool["size"]
    yield "aig_db_pool_checked_out", "Database connections in use.", {}, pool["checked_out"]
    yield "aig_db_pool_overflow", "Database connections beyond the pool size.", {}, pool["overflow"]
    state = db.breaker.state.value
    for name in _BREAKER_STATES:
        yield (
            "aig_circuit_breaker_state",
            "1 for the breaker's current state.",
            {"breaker": "database", "state": name},
            1.0 if name == state else 0.0,
        )
    yield "aig_audit_queue_depth", "Audit rows waiting to be written.", {}, writer.depth
    yield "aig_audit_rows_written", "Audit rows written by this process.", {}, writer.written
    yield "aig_uptime_seconds", "Seconds since this process became ready.", {}, runtime.uptime_seconds


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        secrets = prepare_data_dir(settings)
        db = Database(settings)
        db.claim_sqlite_file()
        await migrate.upgrade(db)
        cache = build_cache(settings)
        await cache.start()
        bus = build_bus(settings.redis_url, settings.cache_namespace)
        await bus.start()
        limiter = RateLimiter(
            settings.redis_url,
            settings.cache_namespace,
            settings.redis_retry_seconds,
            timeout=settings.redis_timeout_seconds,
        )
        identity = Identity(settings, secrets.secret_key, db, cache.memory, bus)
        await ensure_first_admin(identity)
        hub = app.state.hub = start_hub(settings, bus, identity)
        writer = AuditWriter(
            db,
            batch_size=settings.audit_batch_size,
            flush_interval=settings.audit_flush_interval,
            queue_max=settings.audit_queue_max,
            spool_path=settings.data_dir / "audit-spool.jsonl",
            bus=bus,
        )
        await writer.start()
        usage = UsageService(settings, db, bus)
        await usage.start()
        app.state.usage = usage
        summaries = app.state.conversation_summaries = Summaries()
        guards = GuardService(settings, bus)
        await guards.start()
        app.state.guards = guards
        runtime = Runtime(settings=settings, secrets=secrets, db=db, cache=cache, bus=bus, limiter=limiter)
        app.state.runtime = runtime
        app.state.identity = identity
        configured = gateway_deployments.configured(settings)
        router = Router(
            configured,
            settings.fallbacks,
            breaker_threshold=settings.deployment_breaker_threshold,
            breaker_reset_seconds=settings.deployment_breaker_reset_seconds,
        )
        providers: dict[str, Provider] = {
            "openai": OpenAIProvider(),
            "anthropic": AnthropicProvider(),
            "demo": DemoProvider(),
        }
        app.state.gateway = Gateway(
            router,
            providers,
            max_retries=settings.gateway_max_retries,
            backoff_seconds=settings.gateway_retry_backoff_seconds,
            answers=AnswerCache(cache, ttl=settings.cache_ttl, scope=settings.gateway_cache_scope),
        )
        deployments = Deployments(settings, db, bus, router, configured=configured, providers=set(providers))
        await deployments.start()
        app.state.deployments = deployments
        app.state.audit_writer = writer
        app.state.probes = [
            database_probe(db),
            cache_probe(cache),
            audit_service.writer_probe(writer),
            deployments.probe(),
        ]
        gauge_key = f"app-{id(app)}"
        metrics.LIVE.sources[gauge_key] = lambda: _live_gauges(runtime, writer)
        log.info("ready", version=__version__, database=db.backend, cache=cache.mode)
        try:
            yield
        finally:
            metrics.LIVE.sources.pop(gauge_key, None)
            await summaries.close()  # before the usage service: each cancelled summary settles its usage
            await writer.close()
            await deployments.close()
            await guards.close()
            for provider in providers.values():
                await provider.close()
            await stop_hub(hub)
            await events.drain(bus)
            await bus.close()
            await limiter.close()
            await cache.close()
            await db.close()
            app.state.audit_writer = None
            metrics.worker_exited(settings.metrics_multiproc_dir)
            log.info("stopped")

    app = FastAPI(
        title="AIGuardian",
        version=__version__,
        description="Self-hosted backend for AI applications.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(ops_router)
    app.include_router(gateway_router)
    app.include_router(deployments_router)
    app.include_router(auth_router)
    app.include_router(users_router)
    app.include_router(keys_router)
    app.include_router(audit_router)
    app.include_router(posts_router)
    app.include_router(conversations_router)
    app.include_router(conversation_chat_router)
    app.include_router(realtime_router)
    app.include_router(usage_router)
    app.include_router(budgets_router)
    app.include_router(guards_router)
    app.add_exception_handler(GuardBlocked, on_guard_blocked)

    excluded = frozenset(settings.audit_exclude_paths)

    def record(done: RequestRecord) -> None:
        writer: AuditWriter | None = getattr(app.state, "audit_writer", None)
        if writer is not None and done.path not in excluded:
            writer.submit(audit_service.entry_from_request(done))
            events.emit(app.state.runtime.bus, events.RequestCompleted.from_record(done))

    def admit() -> AIGError | None:
        writer: AuditWriter | None = getattr(app.state, "audit_writer", None)
        return AuditBacklog() if writer is not None and writer.is_full else None

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID"],
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        on_complete=record,
        admission=admit,
        quiet_paths=excluded,
    )
    return app
