"""What every provider offers, and the one error type they raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiguardian.gateway.deployments import Deployment

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


class UpstreamError(Exception):
    """The provider failed. ``retryable`` says whether another try (here or elsewhere) may succeed."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        error_type: str = "upstream_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.error_type = error_type


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from LLM providers; the breaker's own reset applies


class Provider(Protocol):
    async def chat(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming chat completion in OpenAI's response format."""
        ...

    def stream_chat(self, deployment: Deployment, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        """Server-sent events in OpenAI's chunk format, as bytes, passed on as they arrive. Errors before
        the first chunk raise ``UpstreamError`` (so the call can be retried); later ones end the stream."""
        ...

    async def embeddings(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...
