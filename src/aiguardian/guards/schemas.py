"""API shapes of the guards feature (``/api/v1/guards``, ``/api/v1/validate``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiguardian.guards.base import Verdict


class VerdictOut(BaseModel):
    guard: str
    action: Literal["allow", "warn", "redact", "block"]
    score: float
    reason_codes: list[str]
    findings: list[dict[str, Any]]
    elapsed_ms: float

    @classmethod
    def of(cls, verdict: Verdict) -> VerdictOut:
        return cls.model_validate(verdict.as_dict())


class ValidateRequest(BaseModel):
    """``text`` or ``messages`` (chat messages, read as the gateway reads them); an ``output`` check needs
    ``text`` (the answer) and may give the conversation in ``messages``."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    messages: list[dict[str, Any]] | None = Field(None, min_length=1, max_length=10_000)
    direction: Literal["input", "output"] = "input"
    policy: str | None = Field(
        None, description="A named policy; default: the one the gateway applies to you."
    )
    sources: list[str] | None = Field(None, description="Documents to ground an answer in.")

    @model_validator(mode="after")
    def _something_to_check(self) -> ValidateRequest:
        if self.direction == "output" and self.text is None:
            raise ValueError("an output check needs `text`: the answer")
        if self.text is None and self.messages is None:
            raise ValueError("give `text` or `messages`")
        return self


class ValidateResult(BaseModel):
    policy: str
    direction: str
    action: Literal["allow", "warn", "redact", "block"]
    blocked: bool
    verdicts: list[VerdictOut]
    warnings: list[str]
    redacted_text: str | None = None
    redacted_messages: list[dict[str, Any]] | None = None


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str
    direction: Literal["input", "output", "stream"] = "input"
    messages: list[dict[str, Any]] | None = Field(None, max_length=10_000)
    sources: list[str] | None = None
    options: dict[str, Any] | None = Field(
        None, description="Constructor options for this check; only `threshold` and `action` unless admin."
    )


class GuardInfo(BaseModel):
    name: str
    target: str
    loaded: bool
    error: str | None = None


class GuardsOverview(BaseModel):
    guards: list[GuardInfo]
    policy: dict[str, Any]


class ReloadResult(BaseModel):
    source: str
    digest: str
    changed: bool
    policies: list[str]
    loaded_at: str
