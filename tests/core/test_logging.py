"""Secrets never reach the log."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from aiguardian.core.logging import redact_secrets, redact_text


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc",
        "key aig_live_0123456789abcdef",
        "openai sk-proj-0123456789abcdefghij",
        "postgresql://app:hunter2@db/prod",
        "GET /x?token=hunter2&x=1",
        "password=hunter2",
    ],
)
def test_redact_text_hides_credentials(text: str) -> None:
    assert "hunter2" not in redact_text(text)
    for secret in ("0123456789abcdef", "eyJzdWIiOiIxIn0"):
        assert secret not in redact_text(text)


def test_sensitive_keys_are_redacted() -> None:
    event = redact_secrets(
        None,
        "info",
        {"event": "x", "password": "hunter2", "api_key": "k", "Authorization": "Bearer t", "n": 1},
    )
    assert event["password"] == event["api_key"] == event["Authorization"] == "[redacted]"
    assert event["n"] == 1


async def test_admin_token_never_appears_in_request_logs(
    capsys: pytest.CaptureFixture[str], app: FastAPI, client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    # capsys comes first so the app's log handler is created while it captures.
    token = app.state.runtime.secrets.admin_token
    await client.get("/api/v1/audit", headers=admin_headers)
    await client.get("/api/v1/audit", headers={"Authorization": "Bearer wrong-secret-value"})
    await client.get(f"/api/v1/status?token={token}")
    captured = capsys.readouterr()
    logs = captured.err + captured.out
    assert '"trace_id"' in logs
    assert token not in logs
    assert "wrong-secret-value" not in logs
