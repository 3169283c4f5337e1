"""The guard pipeline: run one direction of a policy over a :class:`GuardContext`, combine the verdicts.

Cost model (measured with ``bench/guards/run.py``): a thread hop costs at least 0.1 ms, and while a guard
holds the GIL the event loop gets a turn only every switch interval, so a thread spares the loop little on
short texts and costs them latency. Guards therefore run on the event loop unless they are ``cpu_bound``
*and* the text is longer than the policy file's ``thread_above_chars`` (2,000); then all such guards of the
request go to ONE worker thread, one after the other, while remote guards wait on the network and the small
guards run on the loop.

Verdicts of deterministic guards are remembered for identical contexts (:class:`VerdictCache`): a retried or
repeated prompt is not checked twice.

Fail closed: a guard that raises, cannot be loaded, or does not answer within ``timeout_ms`` gets a ``block``
verdict (``GUARD_ERROR``, ``GUARD_TIMEOUT``, ``GUARD_UNAVAILABLE``), or ``warn`` when its entry says
``fail_open: true``. A late verdict that is stricter than that still counts.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import orjson
import structlog

from aiguardian.core import metrics
from aiguardian.core.envelope import openai_failure
from aiguardian.core.errors import AIGError, ReasonCode
from aiguardian.guards.base import Action, Direction, Guard, GuardContext, Redactor, Verdict
from aiguardian.guards.loader import GuardLoader, GuardLoadError
from aiguardian.guards.policy import Entry

if TYPE_CHECKING:
    from aiguardian.guards.remote import RemoteGuards

log = structlog.get_logger("aiguardian.guards")


def failure(entry: Entry, code: ReasonCode, elapsed_ms: float = 0.0) -> Verdict:
    return Verdict(
        guard=entry.label,
        action=Action.WARN if entry.fail_open else Action.BLOCK,
        reason_codes=[code.value],
        elapsed_ms=elapsed_ms,
    )


def check_one(entry: Entry, guard: Guard, context: GuardContext) -> Verdict:
    """One guard, one check, timed; never raises."""
    started = time.perf_counter()
    try:
        verdict = guard.check(context)
    except Exception as exc:
        elapsed = (time.perf_counter() - started) * 1000
        # The type only: a guard's message may quote the text it was looking at.
        log.warning("guard failed", guard=entry.label, error=type(exc).__name__)
        return failure(entry, ReasonCode.GUARD_ERROR, elapsed)
    elapsed = (time.perf_counter() - started) * 1000
    if not isinstance(verdict, Verdict):
        log.warning("guard answered no verdict", guard=entry.label, answered=type(verdict).__name__)
        return failure(entry, ReasonCode.GUARD_ERROR, elapsed)
    verdict.guard = entry.label
    verdict.elapsed_ms = elapsed
    if elapsed > entry.timeout_s * 1000:
        late = failure(entry, ReasonCode.GUARD_TIMEOUT, elapsed)
        if late.action.rank > verdict.action.rank:
            return late
    return verdict


def summary(verdict: Verdict, direction: Direction) -> dict[str, Any]:
    """What the audit row keeps of a verdict: no findings, no text."""
    return {
        "guard": verdict.guard,
        "direction": direction.value,
        "action": verdict.action.value,
        "score": round(verdict.score, 4),
        "reason_codes": list(verdict.reason_codes),
        "ms": round(verdict.elapsed_ms, 3),
    }


@dataclass(slots=True)
class Decision:
    """The combined outcome: the highest-ranked action of all verdicts, in policy order."""

    action: Action = Action.ALLOW
    verdicts: list[Verdict] = field(default_factory=list)
    redactors: list[Redactor] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK

    def with_action(self, action: Action) -> list[Verdict]:
        return [v for v in self.verdicts if v.action is action]


def redact_text(text: str, redactors: Sequence[Redactor], state: dict[str, Any]) -> str:
    for redactor in redactors:
        text = redactor.redact(text, state)
    return text


def restore_text(text: str, redactors: Sequence[Redactor], state: dict[str, Any]) -> str:
    for redactor in reversed(redactors):
        text = redactor.restore(text, state)
    return text


class GuardBlocked(AIGError):
    """A policy blocked the request or its answer. The error's ``code`` is the first reason code of the
    first blocking verdict (a guard's own code such as an injection code, or ``GUARD_ERROR``)."""

    status_code = 400
    reason_code = ReasonCode.GUARD_BLOCKED

    def __init__(self, blocking: list[Verdict], direction: Direction) -> None:
        self.verdicts = blocking
        self.direction = direction
        codes: list[str] = []
        for verdict in blocking:
            for code in verdict.reason_codes or [ReasonCode.GUARD_BLOCKED.value]:
                if code not in codes:
                    codes.append(code)
        self.code = codes[0] if codes else ReasonCode.GUARD_BLOCKED.value
        self.reason_codes = codes
        self.passed = b""  # in a stream: the events that passed the checks before this one
        what = "the request" if direction is Direction.INPUT else "the answer"
        named = ", ".join(f"{v.guard} ({', '.join(v.reason_codes) or 'no reason given'})" for v in blocking)
        super().__init__(f"{what} was blocked by guard policy: {named}")

    def openai_body(self, request_id: str) -> dict[str, Any]:
        body = openai_failure(self.code, self.message, self.status_code, request_id)
        body["error"]["reason_codes"] = self.reason_codes
        body["error"]["guards"] = [v.guard for v in self.verdicts]
        return body

    def sse_event(self, request_id: str) -> bytes:
        """The end of a stream an output guard stopped: the events that passed before it, then an error
        event in OpenAI's shape (SDKs raise it)."""
        return self.passed + b"data: " + orjson.dumps(self.openai_body(request_id)) + b"\n\n"


@cache
def _latency(guard: str) -> Any:
    """The latency histogram's child for one guard label (``labels()`` costs a lock and a dict per call)."""
    return metrics.GUARD_LATENCY.labels(guard)


@cache
def _verdicts(guard: str, direction: str, action: str) -> Any:
    return metrics.GUARD_VERDICTS.labels(guard, direction, action)


def _copy(verdict: Verdict) -> Verdict:
    """A verdict that can be changed (the pipeline sets its label, time and action) without touching the
    original; findings are frozen, so the lists are copied and the findings shared."""
    return Verdict(
        verdict.guard,
        verdict.action,
        verdict.score,
        list(verdict.reason_codes),
        list(verdict.findings),
        verdict.elapsed_ms,
        verdict.redacted_text,
    )


class VerdictCache:
    """The verdicts of deterministic guards for recently checked contexts: a bounded LRU.

    Only guards that say ``deterministic = True`` and are not redactors take part: their verdict depends on
    nothing but their options (the entry's key) and what the key below holds (no clock, no randomness, no
    per-request state, no network), so an identical context gets the identical verdict. A redactor keeps
    per-request state (its placeholders), so it always runs. The key holds the texts themselves, not a
    digest of them: a hit is an exact match, never a collision. Texts longer than ``max_chars`` are not
    kept (they are rarely repeated, and they would fill memory). ``size=0`` turns the cache off.
    """

    def __init__(self, size: int = 512, max_chars: int = 10_000) -> None:
        self.size = size
        self.max_chars = max_chars
        self._verdicts: OrderedDict[Hashable, Verdict] = OrderedDict()

    def key(self, entry: Entry, guard: Guard, context: GuardContext) -> Hashable | None:
        if not self.size or not getattr(guard, "deterministic", False) or isinstance(guard, Redactor):
            return None
        if len(context.text) > self.max_chars or sum(map(len, context.sources)) > self.max_chars:
            return None
        messages = orjson.dumps(context.messages) if context.messages else b""
        if len(messages) > 2 * self.max_chars:  # at most a few tens of MB in all
            return None
        return (
            entry.key,
            context.direction,
            context.text,
            messages,
            tuple(context.sources),
            context.system_prompt,
            context.model,
            context.route,
        )

    def get(self, key: Hashable) -> Verdict | None:
        verdict = self._verdicts.get(key)
        if verdict is None:
            return None
        self._verdicts.move_to_end(key)
        return _copy(verdict)

    def put(self, key: Hashable, verdict: Verdict) -> None:
        if any(code.startswith("GUARD_") for code in verdict.reason_codes):
            return  # a failure or a timeout says nothing about the text
        self._verdicts[key] = _copy(verdict)
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > self.size:
            self._verdicts.popitem(last=False)

    def __len__(self) -> int:
        return len(self._verdicts)


class Pipeline:
    def __init__(
        self, loader: GuardLoader, remote: RemoteGuards | None = None, cache: VerdictCache | None = None
    ) -> None:
        self.loader = loader
        self.remote = remote
        self.cache = VerdictCache() if cache is None else cache

    async def run(
        self,
        entries: Sequence[Entry],
        context: GuardContext,
        *,
        thread_above_chars: int,
        count: bool = True,
    ) -> Decision:
        """Every entry's verdict, in policy order. ``count=False`` leaves the verdict counter to the caller
        (a stream counts each guard once, at its worst, not once per window)."""
        if not entries:
            return Decision()
        slots: list[Verdict | None] = [None] * len(entries)
        guards: list[Guard | None] = [None] * len(entries)
        inline: list[int] = []
        threaded: list[int] = []
        remote: list[int] = []
        keys: dict[int, Hashable] = {}
        for i, entry in enumerate(entries):
            if entry.when == "sources" and not context.sources:
                continue
            if entry.remote is not None:
                remote.append(i)
                continue
            guard = self.loader.cached(entry)
            if guard is None:
                try:
                    guard = await self.loader.get(entry)
                except GuardLoadError:
                    slots[i] = failure(entry, ReasonCode.GUARD_ERROR)
                    continue
            guards[i] = guard
            key = self.cache.key(entry, guard, context)
            if key is not None:
                started = time.perf_counter()
                cached = self.cache.get(key)
                if cached is not None:
                    cached.guard = entry.label
                    cached.elapsed_ms = (time.perf_counter() - started) * 1000
                    slots[i] = cached
                    continue
                keys[i] = key
            if guard.cpu_bound and len(context.text) > thread_above_chars:
                threaded.append(i)
            else:
                inline.append(i)

        if remote or threaded:
            async with anyio.create_task_group() as tasks:
                for i in remote:
                    tasks.start_soon(self._remote, entries[i], context, slots, i)
                if threaded:
                    tasks.start_soon(self._threaded, entries, guards, threaded, context, slots)
                await anyio.lowlevel.checkpoint()  # let them send their requests before the loop is busy
                for i in inline:
                    slots[i] = check_one(entries[i], guards[i], context)  # type: ignore[arg-type]
        else:
            for i in inline:
                slots[i] = check_one(entries[i], guards[i], context)  # type: ignore[arg-type]

        for i, key in keys.items():
            verdict = slots[i]
            if verdict is not None:
                self.cache.put(key, verdict)
        decision = Decision()
        for i, verdict in enumerate(slots):
            if verdict is None:
                continue
            if verdict.action is Action.REDACT:
                guard = guards[i]
                if isinstance(guard, Redactor):
                    decision.redactors.append(guard)
                else:  # it wants the text changed and nothing here can: fail closed
                    log.warning("redact verdict from a guard that cannot redact", guard=verdict.guard)
                    verdict.action = Action.BLOCK
            if verdict.action.rank > decision.action.rank:
                decision.action = verdict.action
            decision.verdicts.append(verdict)
            _latency(verdict.guard).observe(verdict.elapsed_ms / 1000)
            if count:
                _verdicts(verdict.guard, context.direction.value, verdict.action.value).inc()
        return decision

    async def _threaded(
        self,
        entries: Sequence[Entry],
        guards: list[Guard | None],
        indexes: list[int],
        context: GuardContext,
        slots: list[Verdict | None],
    ) -> None:
        def work() -> None:
            for i in indexes:
                slots[i] = check_one(entries[i], guards[i], context)  # type: ignore[arg-type]

        started = time.perf_counter()
        # The thread cannot be stopped, only no longer waited for: after every guard's timeout in turn.
        with anyio.move_on_after(sum(entries[i].timeout_s for i in indexes)):
            await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        elapsed = (time.perf_counter() - started) * 1000
        for i in indexes:
            if slots[i] is None:
                slots[i] = failure(entries[i], ReasonCode.GUARD_TIMEOUT, elapsed)

    async def _remote(self, entry: Entry, context: GuardContext, slots: list[Verdict | None], i: int) -> None:
        assert self.remote is not None
        slots[i] = await self.remote.check(entry, context)
