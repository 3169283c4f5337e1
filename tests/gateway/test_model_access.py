"""A key's allowed models apply on /v1: listing and calling."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.conftest import Account


async def key_for(app: FastAPI, account: Account, models: list[str] | None) -> str:
    _, secret = await app.state.identity.create_key(account.id, "k", ["chat", "read"], models=models)
    return str(secret)


async def test_a_key_limited_to_other_models_cannot_list_or_call_the_demo(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    limited = await key_for(app, member, ["some-other-model"])
    listed = await client.get("/v1/models", headers={"Authorization": f"Bearer {limited}"})
    assert listed.status_code == 200
    assert listed.json()["data"] == []
    call = await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {limited}"},
        json={"model": "aiguardian-demo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert call.status_code == 403
    assert call.json()["error"]["code"] == "G2_model_not_allowed"
    unknown = await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {limited}"},
        json={"model": "does-not-exist", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert unknown.status_code == 403, "a limited key must not learn which models exist"


async def test_an_unlimited_key_lists_and_calls_the_demo(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    key = await key_for(app, member, None)
    listed = await client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert [m["id"] for m in listed.json()["data"]] == ["aiguardian-demo"]
    assert "demo" in listed.json()["data"][0]["owned_by"]
    call = await client.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "aiguardian-demo", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert call.status_code == 200
    assert "demo model" in call.json()["choices"][0]["message"]["content"]
