"""The response envelope of every ``/api/v1`` answer, success or error."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

from aiguardian.core.clock import utc_now_iso

# Every error answer says the request was stopped, whatever stopped it: the platform fails closed.
ERROR_STATUS: Literal["BLOCKED"] = "BLOCKED"

T = TypeVar("T")


class ErrorBody(BaseModel):
    code: str
    message: str
    status: Literal["BLOCKED"] = ERROR_STATUS
    reason_codes: list[str]
    trace_id: str
    details: list[dict[str, Any]] | None = None


class Metadata(BaseModel):
    request_id: str
    timestamp: str


class Envelope(BaseModel, Generic[T]):
    success: bool
    data: T | None = None
    error: ErrorBody | None = None
    metadata: Metadata


def ok(data: T, request_id: str) -> Envelope[T]:
    return Envelope[T](
        success=True, data=data, metadata=Metadata(request_id=request_id, timestamp=utc_now_iso())
    )


def failure(
    code: str,
    message: str,
    request_id: str,
    *,
    reason_codes: list[str] | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The error envelope as a plain dict, for the paths that answer without FastAPI's serialiser."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": ERROR_STATUS,
        "reason_codes": reason_codes or [code],
        "trace_id": request_id,
    }
    if details:
        error["details"] = details
    return {
        "success": False,
        "data": None,
        "error": error,
        "metadata": {"request_id": request_id, "timestamp": utc_now_iso()},
    }
