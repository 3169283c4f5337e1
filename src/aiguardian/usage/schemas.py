from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Scope = Literal["key", "user", "global"]
Period = Literal["day", "month", "total"]


class BudgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200)
    scope: Scope
    subject_id: str | None = Field(None, max_length=64, description="The key or user id; none for global.")
    period: Period = "month"
    limit_usd: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=9)
    limit_tokens: int | None = Field(None, ge=0)
    hard: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> BudgetCreate:
        if self.limit_usd is None and self.limit_tokens is None:
            raise ValueError("set limit_usd, limit_tokens or both")
        if (self.scope == "global") != (self.subject_id is None):
            raise ValueError("subject_id is required for key and user budgets, and absent for global ones")
        return self


class BudgetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    period: Period | None = None
    limit_usd: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=9)
    limit_tokens: int | None = Field(None, ge=0)
    hard: bool | None = None


class BudgetOut(BaseModel):
    id: str
    name: str
    scope: Scope
    subject_id: str | None
    period: Period
    limit_usd: Decimal | None
    limit_tokens: int | None
    hard: bool
    window: str
    spent_usd: Decimal
    reserved_usd: Decimal
    spent_tokens: int
    created_at: str
    updated_at: str


class BudgetList(BaseModel):
    items: list[BudgetOut]


class UsageTotals(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Decimal
    cache_hits: int = Field(description="Requests answered from the answer cache (no upstream call).")
    saved_tokens: int = Field(description="Tokens the cache hits would have used upstream.")
    saved_cost_usd: Decimal = Field(description="What the cache hits would have cost.")


class UsageGroup(UsageTotals):
    key: str | None


class UsageSummary(BaseModel):
    since: str | None
    until: str | None
    totals: UsageTotals
    by_day: list[UsageGroup]
    by_model: list[UsageGroup]
    by_key: list[UsageGroup]
    by_user: list[UsageGroup]
