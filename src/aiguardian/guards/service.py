"""The guards feature of one running app: the policy in force, the guard instances, the pipeline, and
reloading the policy without a restart (file watch, admin endpoint, event bus to every process)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import anyio
import orjson
import structlog
from starlette.requests import Request

from aiguardian.core import metrics
from aiguardian.core.bus import EventBus
from aiguardian.core.clock import utc_now_iso
from aiguardian.core.errors import NotFound, ValidationFailed
from aiguardian.guards.base import Direction, Guard, GuardContext, Verdict
from aiguardian.guards.chat import ChatGuard, take_sources
from aiguardian.guards.loader import GuardLoader, GuardLoadError, build
from aiguardian.guards.pipeline import Decision, Pipeline, check_one
from aiguardian.guards.policy import (
    DEFAULT_TIMEOUT_MS,
    Entry,
    PolicyError,
    PolicySet,
    ResolvedPolicy,
    parse,
    shipped,
)
from aiguardian.guards.remote import RemoteGuards
from aiguardian.settings import Settings

log = structlog.get_logger("aiguardian.guards")

POLICY_TOPIC = "guards.policy_reloaded"

# The gateway's own checks (usage/), reported as a guard's verdict: see guards/token_guard.py.
TOKEN_GUARD = "token"  # noqa: S105 (a guard's name)


def read_policy(path: Path | None) -> PolicySet:
    if path is None:
        return shipped()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read the guard policy file {path}: {exc.strerror or exc}") from None
    return parse(text, str(path))


def _build_all(policies: PolicySet, have: dict[str, Guard]) -> dict[str, Guard]:
    """Build every local guard the policies name (reusing instances already built); raise PolicyError
    naming each one that cannot be built, so a bad policy is refused before it is in force."""
    built: dict[str, Guard] = {}
    problems: list[str] = []
    for entry in policies.entries():
        if entry.remote is not None or entry.key in have:
            continue
        try:
            built[entry.key] = build(entry.target, entry.options)
        except GuardLoadError as exc:
            problems.append(f"{entry.label}: {exc}")
    if problems:
        raise PolicyError(f"{policies.source}: " + "; ".join(problems))
    return built


# Names, an address, a link and a source: enough for every shipped guard to read its model.
_WARM_UP_TEXT = "Warm-up: Jane Doe (jane.doe@example.com) asked about https://example.com/docs today."


def _warm_up(policies: PolicySet, have: dict[str, Guard]) -> dict[str, Guard]:
    """Build the policies' local guards and let each check a short text once. Guards read their models on
    first use; done here, in the background at start, that first read is not charged to the first request's
    guard timeout (a busy machine took over a second to load them all, and the request failed closed).
    A guard that cannot be built is left for the pipeline, which reports it as it always does."""
    built: dict[str, Guard] = {}
    for entry in policies.entries():
        if entry.remote is not None or entry.key in have or entry.key in built:
            continue
        with contextlib.suppress(GuardLoadError):
            built[entry.key] = build(entry.target, entry.options)
    for guard in (*have.values(), *built.values()):
        context = GuardContext(
            text=_WARM_UP_TEXT,
            messages=[{"role": "user", "content": _WARM_UP_TEXT}],
            sources=["Jane Doe wrote the docs at https://example.com/docs."],
        )
        try:
            guard.check(context)
        except Exception as exc:  # the pipeline meets the same failure on a real text and reports it there
            log.warning("guard warm-up failed", guard=guard.name, error=type(exc).__name__)
    return built


class GuardService:
    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self.bus = bus
        self.path = settings.guards_policy_file
        token = settings.guard_service_token
        self.remote = RemoteGuards(token.get_secret_value() if token else None)
        self.loader = GuardLoader()
        self.pipeline = Pipeline(self.loader, self.remote)
        self.policies: PolicySet = shipped()
        self.loaded_at = utc_now_iso()
        self._reload_lock = asyncio.Lock()
        self._stamp: tuple[int, int] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._warming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the policy (a broken file stops the start: PolicyError). Guards are built on first use."""
        self._stamp = await self._file_stamp()
        self.policies = await anyio.to_thread.run_sync(read_policy, self.path)
        self.loaded_at = utc_now_iso()
        self.bus.on(POLICY_TOPIC, self._on_reloaded_elsewhere)
        interval = self.settings.guards_reload_interval
        if self.path is not None and interval > 0:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(interval), name="guard-policy")
        log.info("guard policy in force", source=self.policies.source, digest=self.policies.digest)
        self._warming = asyncio.get_running_loop().create_task(self._warm(), name="guards-warm-up")

    async def _warm(self) -> None:
        try:
            self.loader.adopt(await anyio.to_thread.run_sync(_warm_up, self.policies, self.loader.loaded()))
        except Exception:
            log.exception("guard warm-up failed")

    async def _warmed(self) -> None:
        """Wait for the warm-up, if it is still running: a model being read is not a guard being slow."""
        warming = self._warming
        if warming is not None:
            if not warming.done():
                await asyncio.shield(warming)
            self._warming = None

    async def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warming
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.remote.close()

    # -- policy ---------------------------------------------------------------------------------------

    async def reload(self) -> tuple[PolicySet, bool]:
        """Read the policy file again and build its guards; swap it in only when all of that worked.
        Returns the policies in force and whether they changed. Raises PolicyError (the old one stays)."""
        async with self._reload_lock:
            have = self.loader.loaded()

            def prepare() -> tuple[PolicySet, dict[str, Guard]]:
                policies = read_policy(self.path)
                return policies, _build_all(policies, have)

            try:
                policies, built = await anyio.to_thread.run_sync(prepare)
            except PolicyError as exc:
                metrics.GUARD_POLICY_RELOADS.labels("refused").inc()
                log.error("guard policy refused; the previous one stays in force", error=str(exc))
                raise
            changed = policies.digest != self.policies.digest
            self.loader.adopt(built)
            self.loader.forget_errors()
            self.policies = policies
            self.loaded_at = utc_now_iso()
            metrics.GUARD_POLICY_RELOADS.labels("applied").inc()
            log.info("guard policy reloaded", source=policies.source, digest=policies.digest, changed=changed)
            return policies, changed

    async def reload_everywhere(self) -> tuple[PolicySet, bool]:
        """Reload here, then tell every other process to reload its own copy of the file."""
        policies, changed = await self.reload()
        await self.bus.publish(POLICY_TOPIC, {"digest": policies.digest})
        return policies, changed

    async def _on_reloaded_elsewhere(self, _topic: str, payload: dict[str, Any]) -> None:
        if payload.get("digest") == self.policies.digest:
            return
        with contextlib.suppress(PolicyError):  # logged by reload; the old policy stays
            await self.reload()

    async def _file_stamp(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = await anyio.Path(self.path).stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            stamp = await self._file_stamp()
            if stamp is None or stamp == self._stamp:
                continue
            self._stamp = stamp
            with contextlib.suppress(PolicyError):
                await self.reload()

    def policy_for(self, route: str, key_id: str | None, user_id: str | None) -> ResolvedPolicy:
        return self.policies.for_request(route, key_id, user_id)

    def chat(
        self, request: Request, payload: dict[str, Any], *, key_id: str | None, user_id: str | None
    ) -> ChatGuard:
        """The guards of one chat completion. Takes ``aig_sources`` out of ``payload`` (422 if malformed)."""
        sources = take_sources(payload)
        policy = self.policy_for(request.url.path, key_id, user_id)
        return ChatGuard(
            self, policy, request, model=str(payload.get("model")), sources=sources, user_id=user_id
        )

    # -- running guards -------------------------------------------------------------------------------

    async def run(
        self, policy: ResolvedPolicy, direction: Direction, context: GuardContext, *, count: bool = True
    ) -> Decision:
        context.direction = direction
        await self._warmed()
        return await self.pipeline.run(
            policy.entries(direction),
            context,
            thread_above_chars=self.policies.file.thread_above_chars,
            count=count,
        )

    async def check_guard(self, name: str, context: GuardContext, options: dict[str, Any]) -> Verdict:
        """One guard by name, with its own defaults or with ``options``, outside any policy."""
        target = self.policies.names().get(name)
        if target is None:
            raise NotFound(f"there is no guard named {name!r}")
        await self._warmed()
        fingerprint = orjson.dumps(options, option=orjson.OPT_SORT_KEYS).decode()
        entry = Entry(
            name, target, options, False, DEFAULT_TIMEOUT_MS / 1000, None, "always", f"{target}|{fingerprint}"
        )
        if not options:
            decision = await self.pipeline.run(
                [entry], context, thread_above_chars=self.policies.file.thread_above_chars
            )
            return decision.verdicts[0]
        try:
            guard = await self.loader.one_off(target, options)
        except GuardLoadError as exc:
            raise ValidationFailed(
                str(exc), details=[{"field": "body.options", "message": str(exc)}]
            ) from None
        if guard.cpu_bound:
            return await anyio.to_thread.run_sync(check_one, entry, guard, context)
        return check_one(entry, guard, context)

    def overview(self, *, full: bool, policy: ResolvedPolicy) -> dict[str, Any]:
        loaded = {key.partition("|")[0] for key in self.loader.loaded()}
        guards: list[dict[str, Any]] = [
            {"name": TOKEN_GUARD, "target": "built into the gateway (usage/)", "loaded": True, "error": None}
        ]
        for name, target in sorted(self.policies.names().items()):
            error = next((self.loader.error(k) for k in self._keys_of(target) if self.loader.error(k)), None)
            guards.append({"name": name, "target": target, "loaded": target in loaded, "error": error})
        view: dict[str, Any] = {
            "source": self.policies.source,
            "digest": self.policies.digest,
            "loaded_at": self.loaded_at,
            "thread_above_chars": self.policies.file.thread_above_chars,
        }
        if full:
            view["file"] = self.policies.file.model_dump(mode="json", exclude_none=True)
        view["yours"] = {"name": policy.name, **_resolved_view(policy)}
        return {"guards": guards, "policy": view}

    def _keys_of(self, target: str) -> list[str]:
        return [e.key for e in self.policies.entries() if e.target == target]


def _resolved_view(policy: ResolvedPolicy) -> dict[str, Any]:
    def entries(items: tuple[Entry, ...]) -> list[dict[str, Any]]:
        out = []
        for e in items:
            item: dict[str, Any] = {"name": e.label, "target": e.target or None, "options": e.options}
            item.update(fail_open=e.fail_open, timeout_ms=e.timeout_s * 1000, when=e.when)
            if e.remote is not None:
                item["remote"] = e.remote.model_dump()
            out.append(item)
        return out

    return {
        "input": entries(policy.input),
        "output": entries(policy.output),
        "stream": entries(policy.stream),
        "stream_every": policy.stream_every,
        "stream_window": policy.stream_window,
    }
