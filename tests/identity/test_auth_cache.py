"""API keys are resolved once and then served from memory; every change to a key or its owner reaches a key
served that way at once, and only the keys it concerns."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import FastAPI

from tests.conftest import Account, make_account
from tests.identity import assert_refused, client_for, create_key, custom_app, key_header

ME = "/api/v1/auth/me"
USERS = "/api/v1/users"


async def test_a_demoted_owner_takes_the_admin_scope_from_a_resolved_key(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    other_admin = await make_account(app, "admin")
    _, secret = await create_key(client, other_admin.headers, scopes=["read", "admin"])
    assert (await client.get(USERS, headers=key_header(secret))).status_code == 200  # resolved and kept

    demoted = await client.put(
        f"{USERS}/{other_admin.id}/role", headers=admin.headers, json={"role": "member"}
    )
    assert demoted.status_code == 200, demoted.text

    assert_refused(await client.get(USERS, headers=key_header(secret)), 403, "G2_forbidden")
    me = await client.get(ME, headers=key_header(secret))
    assert me.json()["data"]["role"] == "member"


async def test_a_deleted_owner_s_resolved_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    doomed = await make_account(app)
    _, secret = await create_key(client, doomed.headers, scopes=["read"])
    assert (await client.get(ME, headers=key_header(secret))).status_code == 200

    deleted = await client.delete(f"{USERS}/{doomed.id}", headers=admin.headers)
    assert deleted.status_code == 200, deleted.text

    assert_refused(await client.get(ME, headers=key_header(secret)), 401, "G1_auth_invalid")


async def test_revoking_one_key_leaves_the_owner_s_other_keys_working(
    client: httpx.AsyncClient, member: Account
) -> None:
    first_id, first = await create_key(client, member.headers, scopes=["read"])
    _, second = await create_key(client, member.headers, scopes=["read"])
    for secret in (first, second):
        assert (await client.get(ME, headers=key_header(secret))).status_code == 200

    revoked = await client.delete(f"/api/v1/keys/{first_id}", headers=member.headers)
    assert revoked.status_code == 200, revoked.text

    assert_refused(await client.get(ME, headers=key_header(first)), 401, "G1_auth_revoked")
    assert (await client.get(ME, headers=key_header(second))).json()["data"]["id"] == member.id


async def test_more_keys_than_the_cache_holds_still_resolve_and_revoke(
    tmp_path: Path, backend: str, pg_url: str | None
) -> None:
    async with custom_app(tmp_path, backend, pg_url, cache_memory_size=2) as app, client_for(app) as client:
        member = await make_account(app)
        keys = [await create_key(client, member.headers, scopes=["read"]) for _ in range(4)]
        for _ in range(2):
            for _, secret in keys:
                assert (await client.get(ME, headers=key_header(secret))).status_code == 200

        for key_id, _ in keys[:2]:
            revoked = await client.delete(f"/api/v1/keys/{key_id}", headers=member.headers)
            assert revoked.status_code == 200, revoked.text
        for _, secret in keys[:2]:
            assert_refused(await client.get(ME, headers=key_header(secret)), 401, "G1_auth_revoked")
        for _, secret in keys[2:]:
            assert (await client.get(ME, headers=key_header(secret))).status_code == 200
