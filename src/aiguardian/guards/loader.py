"""Guard instances, built on first use: a guard's module (and its model) is imported only when a policy
runs it. One instance per guard and options, shared by every request and every app in the process (guards
keep no per-request state, and their models are read-only)."""

from __future__ import annotations

import asyncio
import importlib
from collections import OrderedDict
from typing import Any

import anyio
import structlog

from aiguardian.guards.base import Guard
from aiguardian.guards.policy import Entry

log = structlog.get_logger("aiguardian.guards")

_BUILT: dict[str, Guard] = {}

# Instances made for one-off checks with options no policy names (POST /api/v1/guards/{name}/check).
_EPHEMERAL_MAX = 16


class GuardLoadError(Exception):
    """The guard cannot be built: its module does not import, or it refused its options."""


def build(target: str, options: dict[str, Any]) -> Guard:
    """Import ``module:Class`` and construct it with the policy's options (blocking: may load a model)."""
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise GuardLoadError(f"cannot import {target}: {type(exc).__name__}: {exc}") from None
    try:
        guard = cls(**options)
    except Exception as exc:
        raise GuardLoadError(f"{target} refused its options {sorted(options)}: {exc}") from None
    if not isinstance(guard, Guard):
        raise GuardLoadError(f"{target} is not a guard: it needs `name`, `cpu_bound` and `check(context)`")
    return guard


class GuardLoader:
    def __init__(self) -> None:
        self._instances = _BUILT
        self._errors: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ephemeral: OrderedDict[str, Guard] = OrderedDict()

    def cached(self, entry: Entry) -> Guard | None:
        return self._instances.get(entry.key)

    def error(self, key: str) -> str | None:
        return self._errors.get(key)

    def loaded(self) -> dict[str, Guard]:
        return dict(self._instances)

    async def get(self, entry: Entry) -> Guard:
        """The entry's instance; built in a worker thread the first time. A failure is remembered (and
        raised again at once) until :meth:`forget_errors`, so a missing module costs one import attempt."""
        guard = self._instances.get(entry.key)
        if guard is not None:
            return guard
        if entry.key in self._errors:
            raise GuardLoadError(self._errors[entry.key])
        lock = self._locks.setdefault(entry.key, asyncio.Lock())
        async with lock:
            guard = self._instances.get(entry.key)
            if guard is not None:
                return guard
            if entry.key in self._errors:
                raise GuardLoadError(self._errors[entry.key])
            try:
                guard = await anyio.to_thread.run_sync(build, entry.target, entry.options)
            except GuardLoadError as exc:
                self._errors[entry.key] = str(exc)
                log.error("guard cannot be loaded", guard=entry.label, error=str(exc))
                raise
            self._instances[entry.key] = guard
            return guard

    def adopt(self, built: dict[str, Guard]) -> None:
        """Take instances built elsewhere (a policy reload builds its guards before it is swapped in)."""
        self._instances.update(built)
        for key in built:
            self._errors.pop(key, None)

    def forget_errors(self) -> None:
        self._errors.clear()

    async def one_off(self, target: str, options: dict[str, Any]) -> Guard:
        """An instance for a check with options of its own; a few are kept, least recently used dropped."""
        key = f"{target}|{sorted(options.items())!r}"
        guard = self._ephemeral.get(key)
        if guard is None:
            guard = await anyio.to_thread.run_sync(build, target, options)
            self._ephemeral[key] = guard
            while len(self._ephemeral) > _EPHEMERAL_MAX:
                self._ephemeral.popitem(last=False)
        else:
            self._ephemeral.move_to_end(key)
        return guard
