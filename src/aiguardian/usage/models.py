from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import Mapped, mapped_column

from aiguardian.core.db import Base
from aiguardian.usage.prices import from_nanos, to_nanos


class Money(TypeDecorator[Decimal]):
    """US dollars as a ``Decimal``, stored as whole nano-dollars in a BIGINT: exact on SQLite (whose
    NUMERIC is a float) and on PostgreSQL alike, and ``SUM`` stays exact."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return int(value) if isinstance(value, int) else to_nanos(Decimal(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else from_nanos(int(value))


_ID = BigInteger().with_variant(Integer, "sqlite")


class UsageRecord(Base):
    """One row per gateway request: what it used and what it cost. Appended in batches, never changed."""

    __tablename__ = "usage_ledger"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    trace_id: Mapped[str] = mapped_column(String(128), index=True)
    user_id: Mapped[str | None] = mapped_column(String(32), index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    deployment: Mapped[str | None] = mapped_column(String(64))
    provider: Mapped[str | None] = mapped_column(String(32))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cost: Mapped[Decimal] = mapped_column(Money)
    latency_ms: Mapped[float] = mapped_column(Float)
    cache_hit: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(16), index=True)  # ok, error, blocked
    stream: Mapped[bool] = mapped_column(Boolean)
    # A cache hit consumes nothing (tokens and cost 0); these say what the upstream call would have used.
    saved_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    saved_cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0), server_default="0")


class Budget(Base):
    """A spending limit on a key, a user or everything, per day, month or in total. The limit is in USD
    (``limit_cost``), with an optional token limit beside it; either may be left out, not both."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    scope: Mapped[str] = mapped_column(String(16), index=True)  # key, user, global
    subject_id: Mapped[str | None] = mapped_column(String(64), index=True)
    owner_id: Mapped[str | None] = mapped_column(String(32), index=True)  # the user a key budget concerns
    period: Mapped[str] = mapped_column(String(8))  # day, month, total
    limit_cost: Mapped[Decimal | None] = mapped_column(Money)
    limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    hard: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BudgetCounter(Base):
    """What a budget has spent and holds reserved in one window (``2026-11-22``, ``2026-11``, ``total``).
    Money in nano-dollars: the reserve and settle statements do integer arithmetic in the database."""

    __tablename__ = "budget_counters"

    budget_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("budgets.id", ondelete="CASCADE"), primary_key=True
    )
    window: Mapped[str] = mapped_column(String(16), primary_key=True)
    spent_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    spent_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


class BudgetReservation(Base):
    """One request's hold on one budget counter, from admission until it is settled. A process that dies in
    between leaves the row behind; once ``expires_at`` is past, a sweep (or the next refused request)
    deletes it and gives its amount back to the counter. Settling deletes it too, so whichever comes first
    releases the amount, and only once."""

    __tablename__ = "budget_reservations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    budget_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("budgets.id", ondelete="CASCADE"), index=True
    )
    window: Mapped[str] = mapped_column(String(16))
    nanos: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    trace_id: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
