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


OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_failure(
    code: str, message: str, status: int, request_id: str, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error format, so every SDK raises its usual exception; ``code`` is our reason code."""
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
            "trace_id": request_id,
        }
    }


def error_body(
    path: str,
    status: int,
    code: str,
    message: str,
    request_id: str,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The error body this path's clients expect: OpenAI's format under ``/v1/``, else the envelope."""
    if path.startswith(OPENAI_PREFIX):
        param = str(details[0].get("field")) if details else None
        return openai_failure(code, message, status, request_id, param)
    return failure(code, message, request_id, details=details)
