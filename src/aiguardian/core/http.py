"""HTTP glue shared by every feature: error handlers that answer the envelope, and common dependencies."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from aiguardian.core.envelope import error_body
from aiguardian.core.errors import AIGError, ReasonCode

_HTTP_REASONS = {
    404: ReasonCode.NOT_FOUND,
    405: ReasonCode.METHOD_NOT_ALLOWED,
    413: ReasonCode.PAYLOAD_TOO_LARGE,
}


def request_id(request: Request) -> str:
    return str(request.state.request_id)


async def _request_id_dependency(request: Request) -> str:
    # Dependencies are async on purpose: FastAPI runs a plain `def` dependency in a worker thread.
    return str(request.state.request_id)


RequestId = Annotated[str, Depends(_request_id_dependency)]


def audit(request: Request, action: str, target: str | None = None) -> None:
    """Name what this request does (and to which object) in its audit row."""
    request.state.audit_action = action
    request.state.audit_target = target


def error_response(
    request: Request,
    status_code: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    request.state.reason_codes = [code]
    body = error_body(request.url.path, status_code, code, message, request_id(request), details)
    return Response(
        orjson.dumps(body), status_code=status_code, headers=headers, media_type="application/json"
    )


async def _on_aig_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AIGError)
    return error_response(
        request, exc.status_code, exc.reason_code.value, exc.message, details=exc.details, headers=exc.headers
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = []
    malformed = False
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()))
        malformed = malformed or err.get("type") == "json_invalid"
        details.append({"field": loc, "message": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    if malformed:
        code, message = ReasonCode.MALFORMED_JSON, "the request body is not valid JSON"
    else:
        code = ReasonCode.VALIDATION_ERROR
        first = details[0] if details else {"field": "?", "message": "invalid"}
        message = f"{first['field']}: {first['message']}"
    return error_response(request, 422, code.value, message, details=details)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_REASONS.get(exc.status_code, ReasonCode.BAD_REQUEST)
    return error_response(
        request, exc.status_code, code.value, str(exc.detail), headers=dict(exc.headers or {})
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AIGError, _on_aig_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
