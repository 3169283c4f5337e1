"""TokenGuard's logic: size a request, reserve its maximum cost against every budget that applies, settle
the real cost afterwards, write the ledger, answer usage questions. Knows no HTTP.

Reserve and settle are single conditional UPDATEs on ``budget_counters``, so they are atomic on SQLite (one
writer) and on PostgreSQL with any number of processes: a reservation succeeds only if
``spent + reserved + amount <= limit`` holds when the row is locked.

Each hold is also a row of ``budget_reservations`` with an expiry, written in the same transaction. Settling
deletes it; a process that dies before settling leaves it, and ``release_expired`` (a periodic sweep, and
any request a hard budget refuses) deletes it later and gives the amount back. Whoever deletes the row
releases the amount, so it is released exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import structlog
from sqlalchemy import ColumnElement, and_, delete, func, insert, literal_column, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from aiguardian.core import events
from aiguardian.core.bus import EventBus
from aiguardian.core.clock import as_utc, iso, utc_now
from aiguardian.core.db import Database
from aiguardian.core.errors import BadRequest, NotFound, RateLimited, ReasonCode
from aiguardian.settings import Settings
from aiguardian.usage import tokens
from aiguardian.usage.ledger import LedgerEntry, LedgerWriter
from aiguardian.usage.models import Budget, BudgetCounter, BudgetReservation, UsageRecord
from aiguardian.usage.prices import PriceBook, from_nanos, to_nanos
from aiguardian.usage.schemas import (
    BudgetCreate,
    BudgetOut,
    BudgetUpdate,
    UsageGroup,
    UsageSummary,
    UsageTotals,
)

log = structlog.get_logger("aiguardian.usage")

BUDGET_CHANGED = "budget.changed"
BUDGET_EXCEEDED = "budget.exceeded"


class BudgetExceeded(RateLimited):
    """A hard budget has no room for this request's maximum cost."""

    reason_code = ReasonCode.TOKEN_BUDGET_EXCEEDED
    message = "the token budget is exhausted"


class ContextExceeded(BadRequest):
    reason_code = ReasonCode.TOKEN_CONTEXT_EXCEEDED
    message = "the prompt is larger than the model's context window"


def window_of(period: str, now: datetime) -> str:
    if period == "day":
        return now.strftime("%Y-%m-%d")
    if period == "month":
        return now.strftime("%Y-%m")
    return "total"


@dataclass(frozen=True)
class BudgetRule:
    """A budget as the hot path needs it, cached in process memory."""

    id: str
    scope: str
    subject_id: str | None
    period: str
    limit_nanos: int | None
    limit_tokens: int | None
    hard: bool

    def applies(self, user_id: str | None, key_id: str | None) -> bool:
        if self.scope == "global":
            return True
        if self.scope == "user":
            return user_id is not None and self.subject_id == user_id
        return key_id is not None and self.subject_id == key_id


@dataclass
class Hold:
    budget_id: str
    window: str
    nanos: int
    tokens: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Call:
    """One metered request, from admission to settlement."""

    trace_id: str
    user_id: str | None
    key_id: str | None
    model: str
    stream: bool
    prompt_tokens: int
    max_completion: int
    reserved_nanos: int
    holds: list[Hold] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    finished: bool = False
    cost_nanos: int = 0

    @property
    def cost(self) -> Decimal:
        return from_nanos(self.cost_nanos)

    @property
    def reserved_cost(self) -> Decimal:
        return from_nanos(self.reserved_nanos)


def _rule(budget: Budget) -> BudgetRule:
    return BudgetRule(
        id=budget.id,
        scope=budget.scope,
        subject_id=budget.subject_id,
        period=budget.period,
        limit_nanos=None if budget.limit_cost is None else to_nanos(budget.limit_cost),
        limit_tokens=budget.limit_tokens,
        hard=budget.hard,
    )


class UsageService:
    def __init__(self, settings: Settings, db: Database, bus: EventBus) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.prices = PriceBook({m: dict(p) for m, p in settings.prices.items()})
        self.ledger = LedgerWriter(
            db,
            batch_size=settings.usage_batch_size,
            flush_interval=settings.usage_flush_interval,
            queue_max=settings.usage_queue_max,
            spool_path=settings.data_dir / "usage-spool.jsonl",
        )
        self._rules: list[BudgetRule] = []
        self._loaded_at = float("-inf")
        self._counters_known: set[tuple[str, str]] = set()
        self._settling: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._lazy_release_after = float("-inf")

    async def start(self) -> None:
        self.bus.on(BUDGET_CHANGED, self._budgets_changed)
        await self.ledger.start()
        loop = asyncio.get_running_loop()
        self._sweeper = loop.create_task(self._sweep(), name="budget-reservation-sweep")
        # Build the encoding now, in a thread, rather than on the first request.
        loop.run_in_executor(None, tokens.encoding)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._settling:
            await asyncio.wait(self._settling, timeout=10)
        await self.ledger.close()

    # -- the budgets a request meets (cached) -------------------------------------------------------------

    async def _budgets_changed(self, _topic: str, _payload: dict[str, Any]) -> None:
        self._loaded_at = float("-inf")

    async def rules_for(self, user_id: str | None, key_id: str | None) -> list[BudgetRule]:
        if time.monotonic() - self._loaded_at > self.settings.budget_cache_ttl:
            loaded_at = time.monotonic()
            async with self.db.session() as session:
                self._rules = [_rule(b) for b in (await session.scalars(select(Budget))).all()]
            self._loaded_at = loaded_at
        return sorted((r for r in self._rules if r.applies(user_id, key_id)), key=lambda r: r.id)

    # -- admission: count, check the context window, reserve ---------------------------------------------

    def max_completion(self, payload: dict[str, Any], prompt_tokens: int, window: int | None) -> int:
        cap = self.settings.usage_max_completion_tokens
        asked = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if isinstance(asked, int) and asked > 0:
            return asked
        if window is not None:
            return max(0, min(cap, window - prompt_tokens))
        return cap

    def max_cost_nanos(
        self, model: str, prompt: int, completion: int, candidates: list[tuple[str, str]]
    ) -> int:
        """The dearest of the deployments that may serve the call: any of them may end up serving it."""
        options = candidates or [("", model)]
        return max(
            self.prices.cost_nanos(model, prompt, completion, provider=p or None, upstream=u)
            for p, u in options
        )

    def context_window(
        self, model: str, windows: list[int | None], candidates: list[tuple[str, str]]
    ) -> int | None:
        declared = [w for w in windows if w]
        if declared:
            return min(declared)
        for provider, upstream in candidates:
            found = self.prices.context_window(upstream, provider)
            if found:
                return found
        return None

    async def fit_messages(self, messages: list[dict[str, Any]], window: int | None) -> int:
        """Count the prompt; over the window, refuse, or drop the oldest non-system messages when the
        settings say ``trim`` (the last message always stays). Returns the prompt's token count."""
        counted = await tokens.count_messages_async(messages)
        if window is None or counted < window:
            return counted
        if self.settings.context_overflow == "trim":
            sizes = [tokens.count_message(m) for m in messages]
            index = 0
            while counted >= window and index < len(messages) - 1:
                if isinstance(messages[index], dict) and messages[index].get("role") in (
                    "system",
                    "developer",
                ):
                    index += 1
                    continue
                counted -= sizes.pop(index)
                messages.pop(index)
            if counted < window:
                return counted
        raise ContextExceeded(
            f"the prompt has about {counted} tokens; the model's context window is {window}",
            details=[{"field": "body.messages", "message": f"{counted} tokens > {window}"}],
        )

    async def admit(
        self,
        *,
        trace_id: str,
        user_id: str | None,
        key_id: str | None,
        model: str,
        stream: bool,
        prompt_tokens: int,
        max_completion: int,
        candidates: list[tuple[str, str]],
    ) -> Call:
        """Reserve the request's maximum cost against every budget that applies (raises BudgetExceeded)."""
        nanos = self.max_cost_nanos(model, prompt_tokens, max_completion, candidates)
        call = Call(trace_id, user_id, key_id, model, stream, prompt_tokens, max_completion, nanos)
        rules = await self.rules_for(user_id, key_id)
        if rules:
            try:
                await self._reserve(call, rules, prompt_tokens + max_completion)
            except BudgetExceeded:
                # The room may be held by a process that died mid-request: free what has expired (looked
                # for at most once a second, so a flood of refusals does not become a flood of queries).
                if time.monotonic() < self._lazy_release_after:
                    raise
                self._lazy_release_after = time.monotonic() + 1.0
                if not await self.release_expired(only_if_any=True):
                    raise
                await self._reserve(call, rules, prompt_tokens + max_completion)
        return call

    def _fits(self, rule: BudgetRule, nanos: int, toks: int) -> ColumnElement[bool]:
        counter = BudgetCounter
        conditions: list[ColumnElement[bool]] = []
        if rule.limit_nanos is not None:
            conditions.append(counter.spent_nanos + counter.reserved_nanos + nanos <= rule.limit_nanos)
        if rule.limit_tokens is not None:
            conditions.append(counter.spent_tokens + counter.reserved_tokens + toks <= rule.limit_tokens)
        return and_(*conditions)

    async def _ensure_counter(self, session: Any, budget_id: str, window: str) -> None:
        if (budget_id, window) in self._counters_known:
            return
        values = {
            "budget_id": budget_id,
            "window": window,
            "spent_nanos": 0,
            "reserved_nanos": 0,
            "spent_tokens": 0,
            "reserved_tokens": 0,
        }
        dialect = postgresql if not self.db.is_sqlite else sqlite
        statement = dialect.insert(BudgetCounter).values(**values).on_conflict_do_nothing()
        await session.execute(statement)

    async def _reserve(self, call: Call, rules: list[BudgetRule], toks: int) -> None:
        now = utc_now()
        expires_at = now + timedelta(seconds=self.settings.budget_reservation_ttl_seconds)
        refused: BudgetRule | None = None
        holds = [Hold(rule.id, window_of(rule.period, now), call.reserved_nanos, toks) for rule in rules]
        try:
            async with self.db.transaction() as session:
                # The reservation rows first: the counter rows' locks, which every concurrent request
                # waits for, are then held only from their UPDATE to the commit.
                await session.execute(
                    insert(BudgetReservation),
                    [
                        {
                            "id": hold.id,
                            "budget_id": hold.budget_id,
                            "window": hold.window,
                            "nanos": hold.nanos,
                            "tokens": hold.tokens,
                            "trace_id": call.trace_id[:128],
                            "expires_at": expires_at,
                        }
                        for hold in holds
                    ],
                )
                for rule, hold in zip(rules, holds, strict=True):  # in id order: one lock order for all
                    window = hold.window
                    await self._ensure_counter(session, rule.id, window)
                    where = and_(BudgetCounter.budget_id == rule.id, BudgetCounter.window == window)
                    add = {
                        "reserved_nanos": BudgetCounter.reserved_nanos + call.reserved_nanos,
                        "reserved_tokens": BudgetCounter.reserved_tokens + toks,
                    }
                    result = await session.execute(
                        update(BudgetCounter)
                        .where(where, self._fits(rule, call.reserved_nanos, toks))
                        .values(**add)
                    )
                    if result.rowcount != 1:  # type: ignore[attr-defined]
                        if rule.hard:
                            refused = rule
                            raise _Refused
                        await session.execute(update(BudgetCounter).where(where).values(**add))
                        call.warnings.append(rule.id)
                    call.holds.append(hold)
        except _Refused:
            call.holds.clear()
            assert refused is not None
            raise BudgetExceeded(
                f"the {refused.period} budget {refused.id} ({refused.scope}) has no room for this request",
                headers={"X-AIG-Budget": refused.id},
            ) from None
        for rule in rules:
            self._counters_known.add((rule.id, window_of(rule.period, now)))
        for budget_id in call.warnings:
            await self.bus.publish(
                BUDGET_EXCEEDED,
                {
                    "budget_id": budget_id,
                    "user_id": call.user_id,
                    "key_id": call.key_id,
                    "trace_id": call.trace_id,
                },
            )

    # -- settlement ---------------------------------------------------------------------------------------

    async def finish(
        self,
        call: Call,
        *,
        status: str,
        usage: dict[str, Any] | None = None,
        completion_text: str | None = None,
        deployment: str | None = None,
        provider: str | None = None,
        upstream_model: str | None = None,
        cache_hit: bool = False,
        charge: bool | None = None,
        saved_tokens: int = 0,
    ) -> Decimal:
        """Settle once: the real cost moves to spent, the reservation is released, a ledger row is queued.
        Safe to call from ``finally`` blocks of cancelled tasks: the database work is shielded. ``charge``
        (default: only when ``ok``) says whether tokens were consumed, as by a stream cut midway. A
        ``cache_hit`` consumes nothing: ``usage`` is the cached answer's, recorded as tokens and cost saved.
        ``saved_tokens`` are tokens saved otherwise (a conversation's trimmed history), added to the row's."""
        if call.finished:
            return call.cost
        call.finished = True
        prompt, completion = 0, 0
        saved_nanos = 0
        if cache_hit:
            would_prompt, would_complete = await self._tokens(call, usage, completion_text)
            saved_tokens += would_prompt + would_complete
            saved_nanos = self.prices.cost_nanos(
                call.model, would_prompt, would_complete, provider=provider, upstream=upstream_model
            )
        elif status == "ok" if charge is None else charge:
            prompt, completion = await self._tokens(call, usage, completion_text)
            call.cost_nanos = self.prices.cost_nanos(
                call.model, prompt, completion, provider=provider, upstream=upstream_model
            )
        with anyio.CancelScope(shield=True):
            await self._settle(call, prompt + completion)
        self.ledger.submit(
            LedgerEntry(
                created_at=utc_now(),
                trace_id=call.trace_id,
                user_id=call.user_id,
                key_id=call.key_id,
                model=call.model,
                deployment=deployment,
                provider=provider,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost=call.cost,
                latency_ms=round((time.perf_counter() - call.started) * 1000, 3),
                cache_hit=cache_hit,
                status=status,
                stream=call.stream,
                saved_tokens=saved_tokens,
                saved_cost=from_nanos(saved_nanos),
            )
        )
        events.emit(
            self.bus,
            events.UsageUpdated(
                user_id=call.user_id,
                trace_id=call.trace_id,
                model=call.model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=str(call.cost),
                key_id=call.key_id,
                saved_tokens=saved_tokens,
            ),
        )
        return call.cost

    async def _tokens(
        self, call: Call, usage: dict[str, Any] | None, completion_text: str | None
    ) -> tuple[int, int]:
        if usage and isinstance(usage.get("prompt_tokens"), int):
            completion = usage.get("completion_tokens")
            return usage["prompt_tokens"], completion if isinstance(completion, int) else 0
        counted = await tokens.count_text_async(completion_text) if completion_text else 0
        return call.prompt_tokens, counted

    async def _settle(self, call: Call, used_tokens: int) -> None:
        if not call.holds:
            return
        for attempt in range(3):
            try:
                async with self.db.transaction() as session:
                    # A reservation is gone when it expired and a sweep released it already: then only the
                    # spending counts. (Deleted before the counter UPDATEs, which lock what others wait for.)
                    still_held = []
                    for hold in call.holds:
                        removed = await session.execute(
                            delete(BudgetReservation).where(BudgetReservation.id == hold.id)
                        )
                        still_held.append(removed.rowcount == 1)  # type: ignore[attr-defined]
                    for hold, held in zip(call.holds, still_held, strict=True):
                        await session.execute(
                            update(BudgetCounter)
                            .where(
                                BudgetCounter.budget_id == hold.budget_id, BudgetCounter.window == hold.window
                            )
                            .values(
                                reserved_nanos=BudgetCounter.reserved_nanos - (hold.nanos if held else 0),
                                spent_nanos=BudgetCounter.spent_nanos + call.cost_nanos,
                                reserved_tokens=BudgetCounter.reserved_tokens - (hold.tokens if held else 0),
                                spent_tokens=BudgetCounter.spent_tokens + used_tokens,
                            )
                        )
                call.holds.clear()
                return
            except Exception as exc:
                log.warning("budget settlement failed", attempt=attempt + 1, error=type(exc).__name__)
                await asyncio.sleep(0.2 * (attempt + 1))
        log.error(
            "budget reservation left held until it expires", trace_id=call.trace_id, holds=len(call.holds)
        )

    # -- reservations left behind -------------------------------------------------------------------------

    async def release_expired(self, now: datetime | None = None, *, only_if_any: bool = False) -> int:
        """Delete the reservations that expired by ``now`` and give their amounts back to the counters;
        returns how many. ``only_if_any`` first looks with a plain read, so a busy refused path does not
        queue for SQLite's one writer when there is nothing to release."""
        now = now or utc_now()
        expired = BudgetReservation.expires_at <= now
        if only_if_any:
            async with self.db.session() as session:
                if await session.scalar(select(BudgetReservation.id).where(expired).limit(1)) is None:
                    return 0
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    delete(BudgetReservation)
                    .where(expired)
                    .returning(
                        BudgetReservation.budget_id,
                        BudgetReservation.window,
                        BudgetReservation.nanos,
                        BudgetReservation.tokens,
                    )
                )
            ).all()
            nanos: Counter[tuple[str, str]] = Counter()
            toks: Counter[tuple[str, str]] = Counter()
            for budget_id, window, held_nanos, held_tokens in rows:
                nanos[(budget_id, window)] += held_nanos
                toks[(budget_id, window)] += held_tokens
            for (budget_id, window), amount in sorted(nanos.items()):  # one lock order, as in _reserve
                await session.execute(
                    update(BudgetCounter)
                    .where(BudgetCounter.budget_id == budget_id, BudgetCounter.window == window)
                    .values(
                        reserved_nanos=BudgetCounter.reserved_nanos - amount,
                        reserved_tokens=BudgetCounter.reserved_tokens - toks[(budget_id, window)],
                    )
                )
        if rows:
            log.warning("expired budget reservations released", reservations=len(rows))
        return len(rows)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.budget_reservation_sweep_seconds)
            try:
                await self.release_expired(only_if_any=True)
            except Exception as exc:  # the database is down: the next sweep tries again
                log.warning("budget reservation sweep failed", error=type(exc).__name__)

    async def blocked(
        self, *, trace_id: str, user_id: str | None, key_id: str | None, model: str, stream: bool
    ) -> None:
        """A request refused before any upstream call still gets its ledger row."""
        call = Call(trace_id, user_id, key_id, model, stream, 0, 0, 0)
        await self.finish(call, status="blocked")

    # -- budgets CRUD -------------------------------------------------------------------------------------

    async def _changed(self, budget_id: str) -> None:
        self._loaded_at = float("-inf")
        await self.bus.publish(BUDGET_CHANGED, {"budget_id": budget_id})

    async def create_budget(self, body: BudgetCreate, owner_id: str | None) -> BudgetOut:
        now = utc_now()
        budget = Budget(
            id=uuid.uuid4().hex,
            name=body.name,
            scope=body.scope,
            subject_id=body.subject_id,
            owner_id=owner_id,
            period=body.period,
            limit_cost=body.limit_usd,
            limit_tokens=body.limit_tokens,
            hard=body.hard,
            created_at=now,
            updated_at=now,
        )
        async with self.db.transaction() as session:
            session.add(budget)
        await self._changed(budget.id)
        return await self.get_budget(budget.id)

    async def _budget(self, session: Any, budget_id: str) -> Budget:
        budget = await session.get(Budget, budget_id)
        if budget is None:
            raise NotFound("no such budget")
        return budget  # type: ignore[no-any-return]

    async def get_budget(self, budget_id: str, visible_to: str | None = None) -> BudgetOut:
        async with self.db.session() as session:
            budget = await self._budget(session, budget_id)
            if visible_to is not None and not self._visible(budget, visible_to):
                raise NotFound("no such budget")
            return (await self._out(session, [budget]))[0]

    @staticmethod
    def _visible(budget: Budget, user_id: str) -> bool:
        return (
            budget.scope == "global"
            or budget.owner_id == user_id
            or (budget.scope == "user" and budget.subject_id == user_id)
        )

    async def list_budgets(self, visible_to: str | None = None) -> list[BudgetOut]:
        async with self.db.session() as session:
            query = select(Budget).order_by(Budget.created_at, Budget.id)
            if visible_to is not None:
                query = query.where(
                    or_(
                        Budget.scope == "global",
                        Budget.owner_id == visible_to,
                        and_(Budget.scope == "user", Budget.subject_id == visible_to),
                    )
                )
            budgets = list((await session.scalars(query)).all())
            return await self._out(session, budgets)

    async def update_budget(self, budget_id: str, body: BudgetUpdate) -> BudgetOut:
        async with self.db.transaction() as session:
            budget = await self._budget(session, budget_id)
            changes = body.model_dump(exclude_unset=True)
            if "limit_usd" in changes:
                budget.limit_cost = changes.pop("limit_usd")
            for name, value in changes.items():
                if value is not None or name == "limit_tokens":
                    setattr(budget, name, value)
            if budget.limit_cost is None and budget.limit_tokens is None:
                raise BadRequest("a budget needs limit_usd, limit_tokens or both")
            budget.updated_at = utc_now()
        await self._changed(budget_id)
        return await self.get_budget(budget_id)

    async def delete_budget(self, budget_id: str) -> BudgetOut:
        out = await self.get_budget(budget_id)
        async with self.db.transaction() as session:
            await session.execute(delete(BudgetReservation).where(BudgetReservation.budget_id == budget_id))
            await session.execute(delete(BudgetCounter).where(BudgetCounter.budget_id == budget_id))
            await session.execute(delete(Budget).where(Budget.id == budget_id))
        self._counters_known = {k for k in self._counters_known if k[0] != budget_id}
        await self._changed(budget_id)
        return out

    async def _out(self, session: Any, budgets: list[Budget]) -> list[BudgetOut]:
        now = utc_now()
        out = []
        for budget in budgets:
            window = window_of(budget.period, now)
            counter = await session.get(BudgetCounter, (budget.id, window))
            out.append(
                BudgetOut(
                    id=budget.id,
                    name=budget.name,
                    scope=budget.scope,
                    subject_id=budget.subject_id,
                    period=budget.period,
                    limit_usd=budget.limit_cost,
                    limit_tokens=budget.limit_tokens,
                    hard=budget.hard,
                    window=window,
                    spent_usd=from_nanos(counter.spent_nanos if counter else 0),
                    reserved_usd=from_nanos(counter.reserved_nanos if counter else 0),
                    spent_tokens=counter.spent_tokens if counter else 0,
                    created_at=iso(budget.created_at),
                    updated_at=iso(budget.updated_at),
                )
            )
        return out

    async def counters(self, budget_id: str) -> list[BudgetCounter]:
        async with self.db.session() as session:
            query = select(BudgetCounter).where(BudgetCounter.budget_id == budget_id)
            return list((await session.scalars(query)).all())

    # -- usage queries ------------------------------------------------------------------------------------

    async def summary(
        self, *, user_id: str | None, since: datetime | None, until: datetime | None
    ) -> UsageSummary:
        filters: list[ColumnElement[bool]] = []
        if user_id is not None:
            filters.append(UsageRecord.user_id == user_id)
        if since is not None:
            filters.append(UsageRecord.created_at >= as_utc(since))
        if until is not None:
            filters.append(UsageRecord.created_at < as_utc(until))
        if self.db.is_sqlite:
            day: Any = func.substr(UsageRecord.created_at, 1, 10)
        else:
            day = func.to_char(func.timezone("UTC", UsageRecord.created_at), literal_column("'YYYY-MM-DD'"))
        measures = (
            func.count(UsageRecord.id),
            func.coalesce(func.sum(UsageRecord.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecord.completion_tokens), 0),
            func.coalesce(func.sum(UsageRecord.cost), 0),
            func.count(UsageRecord.id).filter(UsageRecord.cache_hit.is_(True)),
            func.coalesce(func.sum(UsageRecord.saved_tokens), 0),
            func.coalesce(func.sum(UsageRecord.saved_cost), 0),
        )

        def usd(value: Any) -> Decimal:
            return value if isinstance(value, Decimal) else from_nanos(int(value))

        def totals(row: Any) -> dict[str, Any]:
            prompt, completion = int(row[1]), int(row[2])
            return {
                "requests": int(row[0]),
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "cost_usd": usd(row[3]),
                "cache_hits": int(row[4]),
                "saved_tokens": int(row[5]),
                "saved_cost_usd": usd(row[6]),
            }

        async with self.db.session() as session:
            total_row = (await session.execute(select(*measures).where(*filters))).one()
            groups: dict[str, list[UsageGroup]] = {}
            for name, column in (
                ("by_day", day),
                ("by_model", UsageRecord.model),
                ("by_key", UsageRecord.key_id),
                ("by_user", UsageRecord.user_id),
            ):
                labelled = column.label("k")
                rows = (
                    await session.execute(
                        select(labelled, *measures).where(*filters).group_by(labelled).order_by(labelled)
                    )
                ).all()
                groups[name] = [UsageGroup(key=row[0], **totals(row[1:])) for row in rows]
        return UsageSummary(
            since=iso(since) if since else None,
            until=iso(until) if until else None,
            totals=UsageTotals(**totals(total_row)),
            **groups,
        )


class _Refused(Exception):
    """Rolls back the reservation transaction when a hard budget refuses."""
