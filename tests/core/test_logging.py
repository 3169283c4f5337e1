"""Secrets never reach the log."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from aiguardian.core.logging import redact_secrets, redact_text
from tests.conftest import make_account


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


async def test_passwords_tokens_and_keys_never_appear_in_logs(
    capsys: pytest.CaptureFixture[str], app: FastAPI, client: httpx.AsyncClient
) -> None:
    # capsys comes first so the app's log handler is created while it captures.
    account = await make_account(app, "member")
    login = await client.post(
        "/api/v1/auth/login", data={"username": account.email, "password": account.password}
    )
    assert login.status_code == 200
    tokens = login.json()["data"]
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    created = await client.post("/api/v1/keys", headers=headers, json={"name": "ci", "scopes": ["read"]})
    secret = created.json()["data"]["key"]
    assert (await client.get("/api/v1/auth/me", headers={"X-API-Key": secret})).status_code == 200
    await client.post(
        "/api/v1/auth/login", data={"username": account.email, "password": "wrong-Password-123"}
    )
    await client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    await client.get(f"/api/v1/status?token={tokens['access_token']}&api_key={secret}")
    await app.state.audit_writer.flush()
    captured = capsys.readouterr()
    logs = captured.err + captured.out
    assert '"trace_id"' in logs
    for value in (
        account.password,
        "wrong-Password-123",
        tokens["access_token"],
        tokens["refresh_token"],
        secret,
    ):
        assert value not in logs
