"""Login sessions and API keys: rotation, reuse, logout, password change, revocation, expiry, ownership and
disabled accounts. Every refusal is checked for its status and reason code, and for writing nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from aiguardian.identity import service, tokens
from aiguardian.identity.models import ApiKey, RefreshToken
from tests.conftest import Account, make_account
from tests.identity import (
    KEY_BODY,
    assert_refused,
    bearer,
    create_key,
    error_code,
    key_header,
    login,
    snapshot,
)

ME = "/api/v1/auth/me"
# A refresh token of an ended session (reused, signed out, password changed) is refused as a reuse.
ENDED = (401, "G1_refresh_token_reused")


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/v1/auth/refresh", json={"refresh_token": token})


async def family_rows(app: FastAPI, family_of: str) -> list[RefreshToken]:
    async with app.state.runtime.db.session() as session:
        family = await session.scalar(
            select(RefreshToken.family_id).where(RefreshToken.token_hash == tokens.digest(family_of))
        )
        return list(
            (await session.scalars(select(RefreshToken).where(RefreshToken.family_id == family))).all()
        )


# -- refresh tokens -------------------------------------------------------------------------------------------


async def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    first = await login(client, member.email, member.password)
    rotated = await refresh(client, first["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["data"]
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get(ME, headers=bearer(second["access_token"]))).status_code == 200

    before = await snapshot(app)
    assert_refused(await refresh(client, first["refresh_token"]), 401, "G1_refresh_token_reused")
    after = await snapshot(app)
    # Nothing was issued: the same token rows, now all revoked.
    assert [r[0] for r in after["refresh_tokens"]] == [r[0] for r in before["refresh_tokens"]]
    family = await family_rows(app, first["refresh_token"])
    assert len(family) == 2
    assert all(row.revoked_at is not None for row in family)

    # The newer refresh token and every access token of the session are dead too.
    assert_refused(await refresh(client, second["refresh_token"]), *ENDED)
    for access in (first["access_token"], second["access_token"]):
        assert_refused(await client.get(ME, headers=bearer(access)), 401, "G1_auth_revoked")
        assert_refused(
            await client.post("/api/v1/keys", headers=bearer(access), json=KEY_BODY), 401, "G1_auth_revoked"
        )
    # Only that session: the member's other login still works.
    assert (await client.get(ME, headers=member.headers)).status_code == 200
    assert_refused(await refresh(client, "rt_" + "x" * 43), 401, "G1_auth_invalid")
    assert await snapshot(app) == after


async def test_concurrent_refreshes_of_one_token_leave_no_live_session(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    """Of concurrent refreshes with one token one wins, the others are reuse, and the reuse also kills the
    winner's new tokens, however the requests interleave."""
    for _ in range(3):
        pair = await login(client, member.email, member.password)
        answers = await asyncio.gather(*(refresh(client, pair["refresh_token"]) for _ in range(8)))
        outcomes = sorted((r.status_code, error_code(r)) for r in answers)
        assert outcomes == [(200, None)] + [(401, "G1_refresh_token_reused")] * 7, outcomes
        winner = next(r for r in answers if r.status_code == 200).json()["data"]
        assert_refused(await refresh(client, winner["refresh_token"]), *ENDED)
        assert_refused(await client.get(ME, headers=bearer(winner["access_token"])), 401, "G1_auth_revoked")
        assert all(row.revoked_at is not None for row in await family_rows(app, pair["refresh_token"]))


# -- logout and password change ---------------------------------------------------------------------------------


async def test_logout_revokes_the_session(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    pair = await login(client, member.email, member.password)
    out = await client.post("/api/v1/auth/logout", headers=bearer(pair["access_token"]), json={})
    assert out.status_code == 200, out.text
    assert_refused(await client.get(ME, headers=bearer(pair["access_token"])), 401, "G1_auth_revoked")
    assert_refused(await refresh(client, pair["refresh_token"]), *ENDED)

    # Signing out someone else's session is not possible: 404, and it stays signed in.
    before = await snapshot(app)
    foreign = await client.post(
        "/api/v1/auth/logout", headers=member.headers, json={"refresh_token": admin.refresh_token}
    )
    assert_refused(foreign, 404, "E2_not_found")
    assert_refused(
        await client.post("/api/v1/auth/logout", json={"refresh_token": admin.refresh_token}),
        401,
        "G0_auth_not_configured",
    )
    assert await snapshot(app) == before
    assert (await client.get(ME, headers=admin.headers)).status_code == 200

    # With an API key, a session is ended by naming its refresh token.
    _, secret = await create_key(client, member.headers, scopes=["read", "write"])
    other = await login(client, member.email, member.password)
    out = await client.post(
        "/api/v1/auth/logout", headers=key_header(secret), json={"refresh_token": other["refresh_token"]}
    )
    assert out.status_code == 200, out.text
    assert_refused(await client.get(ME, headers=bearer(other["access_token"])), 401, "G1_auth_revoked")
    assert (await client.get(ME, headers=key_header(secret))).status_code == 200


async def test_password_change_revokes_the_other_sessions_only(
    app: FastAPI, client: httpx.AsyncClient, member: Account
) -> None:
    current = await login(client, member.email, member.password)
    other = await login(client, member.email, member.password)
    _, secret = await create_key(client, member.headers, scopes=["read", "write"])
    new_password = "a-new-password-2"
    path = "/api/v1/auth/password"

    before = await snapshot(app)
    wrong = await client.post(
        path,
        headers=bearer(current["access_token"]),
        json={"current_password": "not-it-at-all-1", "new_password": new_password},
    )
    assert_refused(wrong, 403, "G1_login_failed")
    by_key = await client.post(
        path,
        headers=key_header(secret),
        json={"current_password": member.password, "new_password": new_password},
    )
    assert_refused(by_key, 403, "G2_forbidden")
    weak = await client.post(
        path,
        headers=bearer(current["access_token"]),
        json={"current_password": member.password, "new_password": "short"},
    )
    assert_refused(weak, 422, "E1_validation_error")
    assert weak.json()["error"]["details"][0]["field"] == "body.new_password"
    assert await snapshot(app) == before

    changed = await client.post(
        path,
        headers=bearer(current["access_token"]),
        json={"current_password": member.password, "new_password": new_password},
    )
    assert changed.status_code == 200, changed.text

    # The session that changed it goes on (access and refresh) ...
    assert (await client.get(ME, headers=bearer(current["access_token"]))).status_code == 200
    assert (await refresh(client, current["refresh_token"])).status_code == 200
    # ... every other one is over, at once.
    assert_refused(await client.get(ME, headers=bearer(other["access_token"])), 401, "G1_auth_revoked")
    assert_refused(await client.get(ME, headers=member.headers), 401, "G1_auth_revoked")
    assert_refused(await refresh(client, other["refresh_token"]), *ENDED)
    assert_refused(await refresh(client, member.refresh_token), *ENDED)

    old = await client.post(
        "/api/v1/auth/login", json={"username": member.email, "password": member.password}
    )
    assert_refused(old, 401, "G1_login_failed")
    await login(client, member.email, new_password)


# -- API keys -------------------------------------------------------------------------------------------------


async def test_a_revoked_key_is_refused(app: FastAPI, client: httpx.AsyncClient, member: Account) -> None:
    key_id, secret = await create_key(client, member.headers, scopes=["read", "write"])
    assert (await client.get(ME, headers=key_header(secret))).status_code == 200  # now cached
    revoked = await client.delete(f"/api/v1/keys/{key_id}", headers=member.headers)
    assert revoked.status_code == 200, revoked.text
    revoked_at = revoked.json()["data"]["revoked_at"]
    assert revoked_at

    before = await snapshot(app)
    for headers in (key_header(secret), bearer(secret)):
        assert_refused(await client.get(ME, headers=headers), 401, "G1_auth_revoked")
        assert_refused(
            await client.post("/api/v1/keys", headers=headers, json=KEY_BODY), 401, "G1_auth_revoked"
        )
        assert_refused(await client.delete(f"/api/v1/keys/{key_id}", headers=headers), 401, "G1_auth_revoked")
    assert await snapshot(app) == before
    # Revoking again changes nothing.
    again = await client.delete(f"/api/v1/keys/{key_id}", headers=member.headers)
    assert again.status_code == 200
    assert again.json()["data"]["revoked_at"] == revoked_at
    assert await snapshot(app) == before


async def test_an_expired_key_is_refused(
    app: FastAPI, client: httpx.AsyncClient, member: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _, used = await create_key(client, member.headers, scopes=["read", "write"], expires_at=soon)
    _, unused = await create_key(client, member.headers, scopes=["read", "write"], expires_at=soon)
    stored_id, stored_expired = await create_key(client, member.headers, scopes=["read", "write"])
    assert (await client.get(ME, headers=key_header(used))).status_code == 200  # cached while valid
    async with app.state.runtime.db.transaction() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == stored_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    before = await snapshot(app)
    assert_refused(await client.get(ME, headers=key_header(stored_expired)), 401, "G1_auth_expired")

    real_now = service.utc_now
    monkeypatch.setattr(service, "utc_now", lambda: real_now() + timedelta(hours=2))
    for secret in (used, unused):
        assert_refused(await client.get(ME, headers=key_header(secret)), 401, "G1_auth_expired")
        assert_refused(
            await client.post("/api/v1/keys", headers=key_header(secret), json=KEY_BODY),
            401,
            "G1_auth_expired",
        )
    assert await snapshot(app) == before


async def test_users_cannot_see_or_revoke_each_others_keys(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    other = await make_account(app, "member")
    theirs, their_secret = await create_key(client, other.headers, scopes=["read", "write"])
    _, my_secret = await create_key(client, member.headers, scopes=["read", "write"])
    before = await snapshot(app)

    for headers in (member.headers, key_header(my_secret)):
        assert_refused(await client.get(f"/api/v1/keys/{theirs}", headers=headers), 404, "E2_not_found")
        assert_refused(await client.delete(f"/api/v1/keys/{theirs}", headers=headers), 404, "E2_not_found")
        listed = await client.get("/api/v1/keys", headers=headers, params={"user_id": other.id})
        assert_refused(listed, 403, "G2_forbidden")
        mine = await client.get("/api/v1/keys", headers=headers)
        assert theirs not in {k["id"] for k in mine.json()["data"]["items"]}
        made = await client.post("/api/v1/keys", headers=headers, json={**KEY_BODY, "user_id": other.id})
        assert_refused(made, 403, "G2_forbidden")
    assert await snapshot(app) == before

    # Their key is untouched and still works; the 404 was about ownership (an admin sees it).
    assert (await client.get(ME, headers=key_header(their_secret))).json()["data"]["id"] == other.id
    seen = await client.get(f"/api/v1/keys/{theirs}", headers=other.headers)
    assert seen.json()["data"]["revoked_at"] is None
    assert (await client.get(f"/api/v1/keys/{theirs}", headers=admin.headers)).status_code == 200


# -- disabled accounts ----------------------------------------------------------------------------------------


async def test_a_disabled_user_is_refused_everywhere_at_once(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    _, secret = await create_key(client, member.headers, scopes=["read", "write", "chat"])
    session = await login(client, member.email, member.password)
    credentials: list[dict[str, str]] = [
        member.headers,
        bearer(session["access_token"]),
        key_header(secret),
        bearer(secret),
    ]
    for headers in credentials:  # every credential works, and is cached
        assert (await client.get(ME, headers=headers)).status_code == 200

    disabled = await client.post(f"/api/v1/users/{member.id}/disable", headers=admin.headers)
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["data"]["is_active"] is False

    before = await snapshot(app)
    for headers in credentials:
        assert_refused(await client.get(ME, headers=headers), 401, "G1_account_disabled")
        assert_refused(
            await client.post("/api/v1/keys", headers=headers, json=KEY_BODY), 401, "G1_account_disabled"
        )
    signin = await client.post(
        "/api/v1/auth/login", json={"username": member.email, "password": member.password}
    )
    assert_refused(signin, 401, "G1_account_disabled")
    for token in (session["refresh_token"], member.refresh_token):
        response = await refresh(client, token)
        # Refused whichever reason is named first: its session was ended when the account was disabled.
        assert (response.status_code, error_code(response)) in {ENDED, (401, "G1_account_disabled")}
    assert await snapshot(app) == before

    # Enabling the account again does not bring its sessions back.
    assert (await client.post(f"/api/v1/users/{member.id}/enable", headers=admin.headers)).status_code == 200
    assert_refused(await client.get(ME, headers=bearer(session["access_token"])), 401, "G1_auth_revoked")
