"""One error hierarchy: every error the API can answer carries an HTTP status and a reason code."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ReasonCode(StrEnum):
    """Stable, documented codes; clients match on these, never on messages.

    The letter groups them: E = errors of the request or the platform, G = gate (authentication).
    """

    BAD_REQUEST = "E1_bad_request"
    VALIDATION_ERROR = "E1_validation_error"
    MALFORMED_JSON = "E1_malformed_json"
    PAYLOAD_TOO_LARGE = "E1_payload_too_large"
    NOT_FOUND = "E2_not_found"
    METHOD_NOT_ALLOWED = "E2_method_not_allowed"
    CONFLICT = "E2_conflict"
    DATABASE_UNAVAILABLE = "E3_database_unavailable"
    AUDIT_BACKLOG = "E3_audit_backlog"
    SERVICE_UNAVAILABLE = "E3_service_unavailable"
    RATE_LIMITED = "E4_rate_limited"
    INTERNAL_ERROR = "E5_internal_error"
    AUTH_NOT_CONFIGURED = "G0_auth_not_configured"
    AUTH_INVALID = "G1_auth_invalid"
    AUTH_EXPIRED = "G1_auth_expired"
    AUTH_REVOKED = "G1_auth_revoked"
    REFRESH_REUSED = "G1_refresh_token_reused"
    ACCOUNT_DISABLED = "G1_account_disabled"
    LOGIN_FAILED = "G1_login_failed"
    FORBIDDEN = "G2_forbidden"
    SCOPE_MISSING = "G2_scope_missing"
    REGISTRATION_CLOSED = "G2_registration_closed"
    MODEL_NOT_ALLOWED = "G2_model_not_allowed"
    LOGIN_RATE_LIMITED = "E4_login_rate_limited"
    MODEL_NOT_FOUND = "U0_model_not_found"
    UPSTREAM_UNAVAILABLE = "U1_upstream_unavailable"
    UPSTREAM_TIMEOUT = "U1_upstream_timeout"
    UPSTREAM_RATE_LIMITED = "U1_upstream_rate_limited"
    UPSTREAM_REJECTED = "U2_upstream_rejected"
    UPSTREAM_STREAM_BROKEN = "U3_upstream_stream_broken"
    # Named by the TokenGuard issue, without a letter group: clients were promised these exact strings.
    TOKEN_BUDGET_EXCEEDED = "TOKEN_BUDGET_EXCEEDED"  # noqa: S105 (a reason code, not a secret)
    TOKEN_CONTEXT_EXCEEDED = "TOKEN_CONTEXT_EXCEEDED"  # noqa: S105
    # The guard pipeline's own codes (a guard's verdict carries codes of its own beside these).
    GUARD_BLOCKED = "GUARD_BLOCKED"  # a guard blocked without naming a reason
    GUARD_ERROR = "GUARD_ERROR"  # the guard raised, or could not be loaded: fail closed
    GUARD_TIMEOUT = "GUARD_TIMEOUT"  # the guard did not answer within its timeout_ms
    GUARD_UNAVAILABLE = "GUARD_UNAVAILABLE"  # a remote guard service could not be reached or answered badly
    POLICY_INVALID = "E1_policy_invalid"


class AIGError(Exception):
    """Base of every error the API answers on purpose."""

    status_code: int = 500
    reason_code: ReasonCode = ReasonCode.INTERNAL_ERROR
    message: str = "internal error"

    def __init__(
        self,
        message: str | None = None,
        *,
        reason_code: ReasonCode | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or type(self).message
        if reason_code is not None:
            self.reason_code = reason_code
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)


class BadRequest(AIGError):
    status_code = 400
    reason_code = ReasonCode.BAD_REQUEST
    message = "bad request"


class ValidationFailed(AIGError):
    status_code = 422
    reason_code = ReasonCode.VALIDATION_ERROR
    message = "the request is not valid"


class NotAuthenticated(AIGError):
    status_code = 401
    reason_code = ReasonCode.AUTH_NOT_CONFIGURED
    message = "authentication required"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(AIGError):
    status_code = 403
    reason_code = ReasonCode.FORBIDDEN
    message = "not allowed"


class NotFound(AIGError):
    status_code = 404
    reason_code = ReasonCode.NOT_FOUND
    message = "not found"


class Conflict(AIGError):
    status_code = 409
    reason_code = ReasonCode.CONFLICT
    message = "conflict"


class PayloadTooLarge(AIGError):
    status_code = 413
    reason_code = ReasonCode.PAYLOAD_TOO_LARGE
    message = "request body too large"


class RateLimited(AIGError):
    status_code = 429
    reason_code = ReasonCode.RATE_LIMITED
    message = "rate limit exceeded"


class ServiceUnavailable(AIGError):
    status_code = 503
    reason_code = ReasonCode.SERVICE_UNAVAILABLE
    message = "service unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    reason_code = ReasonCode.DATABASE_UNAVAILABLE
    message = "the database is unavailable; retry shortly"


class InternalError(AIGError):
    """Anything we did not expect. Answered fail-closed, never with its details."""


class AuditBacklog(ServiceUnavailable):
    """Fail closed: a request that could not be audited is not served."""

    reason_code = ReasonCode.AUDIT_BACKLOG
    message = "the audit log is not keeping up; retry shortly"


class UpstreamFailed(AIGError):
    """The model provider could not give an answer (after retries and fallbacks)."""

    status_code = 502
    reason_code = ReasonCode.UPSTREAM_UNAVAILABLE
    message = "the model provider did not answer"

    def __init__(self, message: str | None = None, *, status_code: int = 502, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.status_code = status_code
