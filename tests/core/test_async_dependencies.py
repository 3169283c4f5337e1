"""Every route dependency is a coroutine: FastAPI runs a plain `def` dependency in a worker thread, a
thread hop on every request (it once cost the gateway half its throughput)."""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from aiguardian.app import create_app
from tests.conftest import make_settings


def sync_dependencies(dependant: Any, found: set[str]) -> set[str]:
    for sub in dependant.dependencies:
        call = sub.call
        if call is not None and not inspect.iscoroutinefunction(call) and not inspect.isclass(call):
            found.add(f"{getattr(call, '__module__', '?')}.{getattr(call, '__qualname__', call)}")
        sync_dependencies(sub, found)
    return found


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Routes of the app and of every included router (FastAPI keeps included routers as wrappers)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def test_no_route_has_a_sync_dependency(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app: FastAPI = create_app(make_settings(tmp_path, "sqlite", None))
    routes = api_routes(app.routes)
    assert any(r.path == "/v1/chat/completions" for r in routes)
    found: set[str] = set()
    for route in routes:
        sync_dependencies(route.dependant, found)
    assert not found, f"make these `async def`: {sorted(found)}"
