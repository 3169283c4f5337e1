"""Identity security: every refusal has the right status and reason code and writes nothing.

Credentials (none, broken, forged JWTs), roles and scopes, injection strings in every filter, oversized and
malformed bodies, login brute force, registration, the password policy, the first admin, and the audit
trail those leave.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, func, select

from aiguardian.audit.service import verify
from aiguardian.identity import passwords
from aiguardian.identity.bootstrap import ensure_first_admin
from aiguardian.identity.models import User
from tests.conftest import Account, make_account
from tests.identity import (
    KEY_BODY,
    assert_refused,
    audit_rows,
    bearer,
    client_for,
    create_key,
    custom_app,
    error_code,
    key_header,
    login,
    snapshot,
)

# -- credentials --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def hand_made_jwt(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature)]
    )


def claims_for(user_id: Any, session_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "sid": session_id,
        "iat": now,
        "exp": now + 600,
        "iss": "aiguardian",
        "typ": "access",
        "jti": uuid.uuid4().hex,
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def refused_everywhere(
    client: httpx.AsyncClient, headers: dict[str, str], status: int, code: str
) -> None:
    """A read, an admin read and a write, each refused the same way."""
    assert_refused(await client.get("/api/v1/auth/me", headers=headers), status, code)
    assert_refused(await client.get("/api/v1/users", headers=headers), status, code)
    assert_refused(await client.post("/api/v1/keys", headers=headers, json=KEY_BODY), status, code)


async def test_no_credentials_is_401_not_configured(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    before = await snapshot(app)
    for headers in (
        {},
        {"Authorization": "Basic YWRtaW46YWRtaW4="},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"X-API-Key": "  "},
    ):
        await refused_everywhere(client, headers, 401, "G0_auth_not_configured")
        response = await client.post(
            "/api/v1/users",
            headers=headers,
            json={"email": "intruder@example.com", "password": "pw-intruder-123"},
        )
        assert_refused(response, 401, "G0_auth_not_configured")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert_refused(
            await client.put(f"/api/v1/users/{admin.id}/role", headers=headers, json={"role": "member"}),
            401,
            "G0_auth_not_configured",
        )
    assert await snapshot(app) == before


async def test_broken_and_forged_jwts_are_refused(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    secret = app.state.runtime.secrets.secret_key
    member_token = member.headers["Authorization"].removeprefix("Bearer ")
    session_id = jwt.decode(member_token, options={"verify_signature": False})["sid"]

    def signed(claims: dict[str, Any], key: str = secret, algorithm: str = "HS256") -> str:
        return jwt.encode(claims, key, algorithm=algorithm)

    # The scaffolding is right: a token built this way with the app's key and HS256 is accepted.
    control = signed(claims_for(member.id, session_id))
    assert (await client.get("/api/v1/auth/me", headers=bearer(control))).status_code == 200

    header, payload, signature = member_token.split(".")
    escalated = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    escalated["sub"] = admin.id
    before = await snapshot(app)

    expired = signed(
        claims_for(member.id, session_id, iat=int(time.time()) - 7200, exp=int(time.time()) - 60)
    )
    await refused_everywhere(client, bearer(expired), 401, "G1_auth_expired")
    # An expired token for the admin is refused just the same (expiry, not who it names).
    admin_expired = signed(claims_for(admin.id, session_id, exp=int(time.time()) - 1))
    await refused_everywhere(client, bearer(admin_expired), 401, "G1_auth_expired")

    invalid = {
        "not a jwt": "not-a-token",
        "three junk parts": "a.b.c",
        "truncated": member_token[:-10],
        "bad base64 header": "!!!." + member_token.split(".", 1)[1],
        "wrong key": signed(claims_for(member.id, session_id), key="another-secret-key-of-sufficient-length"),
        "alg none": hand_made_jwt({"alg": "none", "typ": "JWT"}, claims_for(admin.id, session_id)),
        "alg None": hand_made_jwt({"alg": "None", "typ": "JWT"}, claims_for(admin.id, session_id)),
        "HS512 with the app's key": signed(claims_for(member.id, session_id), algorithm="HS512"),
        "RS256 header": hand_made_jwt(
            {"alg": "RS256", "typ": "JWT"}, claims_for(admin.id, session_id), b"\x01" * 256
        ),
        "ES256 header": hand_made_jwt(
            {"alg": "ES256", "typ": "JWT", "kid": "x"}, claims_for(admin.id, session_id), b"\x02" * 64
        ),
        "payload swapped to the admin": ".".join([header, b64url(json.dumps(escalated).encode()), signature]),
        "wrong issuer": signed(claims_for(member.id, session_id, iss="someone-else")),
        "not an access token": signed(claims_for(member.id, session_id, typ="refresh")),
        "no expiry": signed(claims_for(member.id, session_id, exp=None)),
        "no subject": signed(claims_for(None, session_id)),
        "numeric subject": signed(claims_for(12345, session_id)),
    }
    for name, token in invalid.items():
        for response in (
            await client.get("/api/v1/auth/me", headers=bearer(token)),
            await client.get("/api/v1/users", headers=bearer(token)),
            await client.post("/api/v1/keys", headers=bearer(token), json=KEY_BODY),
        ):
            assert (response.status_code, error_code(response)) == (401, "G1_auth_invalid"), (
                name,
                response.text,
            )
    # The same junk sent as an API key header is refused too.
    assert_refused(
        await client.get("/api/v1/auth/me", headers=key_header("aig_not-a-real-key")), 401, "G1_auth_invalid"
    )
    assert await snapshot(app) == before


# -- roles and scopes ---------------------------------------------------------------------------------------


async def admin_route_calls(
    client: httpx.AsyncClient, headers: dict[str, str], admin_id: str, own_id: str
) -> list[httpx.Response]:
    return [
        await client.get("/api/v1/users", headers=headers),
        await client.get(f"/api/v1/users/{admin_id}", headers=headers),
        await client.get("/api/v1/audit", headers=headers),
        await client.get("/api/v1/memory", headers=headers),
        await client.get("/api/v1/diagnostic/metrics", headers=headers),
        await client.post(
            "/api/v1/users",
            headers=headers,
            json={"email": f"made-{uuid.uuid4().hex[:6]}@example.com", "password": "pw-made-12345678"},
        ),
        await client.put(f"/api/v1/users/{admin_id}/role", headers=headers, json={"role": "member"}),
        await client.put(f"/api/v1/users/{own_id}/role", headers=headers, json={"role": "admin"}),
        await client.patch(f"/api/v1/users/{own_id}", headers=headers, json={"role": "admin"}),
        await client.post(f"/api/v1/users/{admin_id}/disable", headers=headers),
        await client.delete(f"/api/v1/users/{admin_id}", headers=headers),
    ]


async def test_member_is_forbidden_on_admin_routes(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    _, member_key = await create_key(client, member.headers, scopes=["read", "write", "chat"])
    before = await snapshot(app)
    for headers in (member.headers, key_header(member_key)):
        for response in await admin_route_calls(client, headers, admin.id, member.id):
            assert_refused(response, 403, "G2_forbidden")
        # Listing every user's keys is admin-only too.
        assert_refused(
            await client.get("/api/v1/keys", headers=headers, params={"all_users": "true"}),
            403,
            "G2_forbidden",
        )
    assert await snapshot(app) == before
    me = (await client.get("/api/v1/auth/me", headers=member.headers)).json()["data"]
    assert me["role"] == "member"


async def test_keys_without_the_needed_scope_are_forbidden(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    _, no_admin_scope = await create_key(client, admin.headers, scopes=["read", "write", "chat"])
    _, admin_scope = await create_key(client, admin.headers, scopes=["read", "admin"])
    read_id, read_only = await create_key(client, member.headers, scopes=["read"])
    _, read_write = await create_key(client, member.headers, scopes=["read", "write"])
    before = await snapshot(app)

    for response in await admin_route_calls(client, key_header(no_admin_scope), admin.id, admin.id):
        assert_refused(response, 403, "G2_scope_missing")
    # The same admin's key with the scope is let in (the scope, not the owner, made the difference).
    assert (await client.get("/api/v1/users", headers=key_header(admin_scope))).status_code == 200

    read_only_writes = [
        await client.post("/api/v1/keys", headers=key_header(read_only), json=KEY_BODY),
        await client.delete(f"/api/v1/keys/{read_id}", headers=key_header(read_only)),
        await client.patch("/api/v1/auth/me", headers=key_header(read_only), json={"display_name": "x"}),
    ]
    for response in read_only_writes:
        assert_refused(response, 403, "G2_scope_missing")
    assert (await client.get("/api/v1/keys", headers=key_header(read_only))).status_code == 200

    # No credential mints a key broader than itself; a member never gets the admin scope.
    assert_refused(
        await client.post(
            "/api/v1/keys", headers=key_header(read_write), json={"name": "wider", "scopes": ["read", "chat"]}
        ),
        403,
        "G2_scope_missing",
    )
    assert_refused(
        await client.post("/api/v1/keys", headers=member.headers, json={"name": "x", "scopes": ["admin"]}),
        403,
        "G2_scope_missing",
    )
    assert await snapshot(app) == before


# -- injection strings --------------------------------------------------------------------------------------

INJECTIONS = [
    "' OR 1=1 --",
    '"; DROP TABLE users; --',
    "%",
    "_",
    "\\",
    "\\\\",
    "%' OR '1'='1",
    "admin%",
    "') UNION SELECT password_hash FROM users --",
]
# What an answer would show if a query broke: the driver, the SQL engine, a stack, a stored hash.
LEAK_MARKERS = re.compile(r"sqlalchemy|traceback|syntax error|sqlite3|asyncpg|psycopg|\$argon2")


def no_leak(response: httpx.Response) -> None:
    assert response.status_code != 500, response.text
    assert not LEAK_MARKERS.search(response.text.lower()), response.text


async def test_injection_strings_in_filters_and_login(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    await create_key(client, member.headers)
    await client.get("/api/v1/status")
    users_before = (await client.get("/api/v1/users", headers=admin.headers)).json()["data"]["items"]
    known_ids = {u["id"] for u in users_before}
    before = await snapshot(app)

    matches_nothing = [  # (path, parameter, its max_length): longer values are refused before any query
        ("/api/v1/users", "q", 200),
        ("/api/v1/keys", "user_id", 32),
        ("/api/v1/audit", "actor", 128),
        ("/api/v1/audit", "action", 64),
        ("/api/v1/audit", "route", 512),
        ("/api/v1/audit", "reason_code", 128),
    ]
    typed = [("/api/v1/users", "role"), ("/api/v1/users", "active")]
    cursors = ["/api/v1/users", "/api/v1/keys", "/api/v1/audit"]
    for value in INJECTIONS:
        for path, param, max_length in matches_nothing:
            response = await client.get(path, headers=admin.headers, params={param: value})
            no_leak(response)
            if len(value) > max_length:
                assert_refused(response, 422, "E1_validation_error")
                continue
            assert response.status_code == 200, (path, param, value, response.text)
            assert response.json()["data"]["items"] == [], (path, param, value)
        for path, param in typed:
            response = await client.get(path, headers=admin.headers, params={param: value})
            no_leak(response)
            assert_refused(response, 422, "E1_validation_error")
        for path in cursors:
            for headers in (admin.headers, member.headers):
                if path != "/api/v1/keys" and headers is member.headers:
                    continue
                response = await client.get(path, headers=headers, params={"cursor": value})
                no_leak(response)
                if response.status_code == 200:  # decoded to some id: a page of what this caller may see
                    items = response.json()["data"]["items"]
                    if path == "/api/v1/users":
                        assert {u["id"] for u in items} <= known_ids
                    if path == "/api/v1/keys":
                        assert all(k["user_id"] == member.id for k in items if headers is member.headers)
                else:
                    assert_refused(response, 422, "E1_validation_error")
        # The member's search for another user's keys by id is still forbidden, injection or not.
        response = await client.get("/api/v1/keys", headers=member.headers, params={"user_id": value})
        if len(value) > 32:
            assert_refused(response, 422, "E1_validation_error")
        else:
            assert_refused(response, 403, "G2_forbidden")
    # The login username, with the same strings and aimed at an existing account (argon2 is slow: together).
    attempts = [{"username": value, "password": "x' OR 'x'='x"} for value in INJECTIONS[:5]]
    attempts += [
        {"username": name, "password": "whatever"}
        for name in (f"{member.email}' --", f"{member.email}%", "%@example.test")
    ]
    answers = await asyncio.gather(*(client.post("/api/v1/auth/login", json=a) for a in attempts))
    answers.append(await client.post("/api/v1/auth/login", data={"username": "' OR 1=1 --", "password": "%"}))
    for response in answers:
        no_leak(response)
        assert_refused(response, 401, "G1_login_failed")

    assert await snapshot(app) == before
    users_after = (await client.get("/api/v1/users", headers=admin.headers)).json()["data"]["items"]
    assert users_after == users_before
    # An escaped LIKE still finds what it should.
    found = await client.get("/api/v1/users", headers=admin.headers, params={"q": member.email[:10]})
    assert [u["id"] for u in found.json()["data"]["items"]] == [member.id]
    await app.state.audit_writer.flush()
    assert (await verify(app.state.runtime.db)).ok


async def test_hostile_text_never_stalls_the_audit_log(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    """A NUL in a username, a path or a filter, and an over-long path, are answered without a 500, and
    their audit rows do not hold back the writer (PostgreSQL refuses NUL characters and over-long text)."""
    responses = [
        await client.post("/api/v1/auth/login", json={"username": "x\x00y@example.test", "password": "p"}),
        await client.post("/api/v1/auth/login", data={"username": "\x00", "password": "p"}),
        await client.get("/api/v1/users", headers=admin.headers, params={"q": "a\x00b"}),
        await client.get("/api/v1/audit", headers=admin.headers, params={"actor": "\x00"}),
        await client.get("/api/v1/a%00b"),
        await client.get("/api/v1/" + "a" * 2000),
    ]
    for response in responses:
        no_leak(response)
        assert response.status_code in (401, 404, 200, 422), response.text
    marker = uuid.uuid4().hex
    await client.get("/api/v1/status", headers={"X-Request-ID": marker})
    writer = app.state.audit_writer
    await writer.flush()
    assert writer.depth == 0
    rows = await audit_rows(app, client, admin.headers, route="/api/v1/status")
    assert marker in {r["trace_id"] for r in rows}
    long_rows = await audit_rows(app, client, admin.headers, route="/api/v1/aaaa*")
    assert long_rows
    assert all(len(r["route"]) <= 512 for r in long_rows)
    assert (await verify(app.state.runtime.db)).ok


# -- bodies ---------------------------------------------------------------------------------------------------


async def streamed(data: bytes, chunk: int = 256) -> Any:
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


async def test_oversized_bodies_are_413_and_write_nothing(
    tmp_path: Path, backend: str, pg_url: str | None
) -> None:
    async with custom_app(tmp_path, backend, pg_url, max_body_bytes=1024) as app, client_for(app) as client:
        admin = await make_account(app, "admin")
        before = await snapshot(app)
        big_register = json.dumps(
            {"email": "big@example.com", "password": "pw-big-12345678", "display_name": "x" * 1500}
        ).encode()
        big_login = json.dumps({"username": admin.email, "password": admin.password + "x" * 1500}).encode()
        big_form = f"username={admin.email}&password={admin.password}&pad={'x' * 1500}".encode()
        big_key = json.dumps({"name": "k", "scopes": ["read"], "pad": "x" * 1500}).encode()
        as_json = {"content-type": "application/json"}
        as_form = {"content-type": "application/x-www-form-urlencoded"}
        cases = [
            ("/api/v1/auth/register", big_register, as_json),
            ("/api/v1/auth/login", big_login, as_json),
            ("/api/v1/auth/login", big_form, as_form),
            ("/api/v1/keys", big_key, {**as_json, **admin.headers}),
        ]
        for path, body, headers in cases:
            # With a Content-Length (refused before the app reads a byte) and streamed without one.
            assert_refused(
                await client.post(path, content=body, headers=headers), 413, "E1_payload_too_large"
            )
            response = await client.post(path, content=streamed(body), headers=headers)
            assert "content-length" not in response.request.headers
            assert_refused(response, 413, "E1_payload_too_large")
        assert await snapshot(app) == before
        # Under the limit the same routes work.
        assert (await client.post("/api/v1/keys", headers=admin.headers, json=KEY_BODY)).status_code == 201


async def test_malformed_and_invalid_bodies_are_422_and_write_nothing(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, member: Account
) -> None:
    before = await snapshot(app)
    raw = {"content-type": "application/json"}
    malformed = [b"{not json", b'{"email": "a@example.com", "password": ', b"\xff\xfe{}"]
    for path, headers in (
        ("/api/v1/auth/register", raw),
        ("/api/v1/auth/login", raw),
        ("/api/v1/keys", {**raw, **member.headers}),
    ):
        for body in malformed:
            response = await client.post(path, content=body, headers=headers)
            assert_refused(response, 422, "E1_malformed_json")

    def invalid(response: httpx.Response, field: str) -> None:
        assert_refused(response, 422, "E1_validation_error")
        fields = [d["field"] for d in response.json()["error"]["details"]]
        assert any(f == field or f.startswith(field + ".") for f in fields), (field, fields)

    register = "/api/v1/auth/register"
    good = {"email": "new-user@example.com", "password": "pw-new-user-123"}
    invalid(await client.post(register, json={**good, "email": "not-an-email"}), "body.email")
    invalid(await client.post(register, json={"email": good["email"]}), "body.password")
    invalid(await client.post(register, json={**good, "role": "admin"}), "body.role")  # no mass assignment
    invalid(await client.post(register, json={**good, "is_active": True}), "body.is_active")
    invalid(await client.post(register, json=[good]), "body")
    invalid(await client.post(register, json={**good, "display_name": "x" * 201}), "body.display_name")

    login_path = "/api/v1/auth/login"
    invalid(await client.post(login_path, json={"username": admin.email}), "body.password")
    invalid(await client.post(login_path, json={"username": "", "password": "x"}), "body.username")
    invalid(
        await client.post(login_path, json={**{"username": "a", "password": "b"}, "role": "x"}), "body.role"
    )
    invalid(await client.post(login_path, json="admin"), "body")
    invalid(await client.post(login_path, data={"username": admin.email}), "body.password")

    keys = "/api/v1/keys"
    h = member.headers
    invalid(await client.post(keys, headers=h, json={"name": ""}), "body.name")
    invalid(await client.post(keys, headers=h, json={"name": "k", "scopes": ["root"]}), "body.scopes")
    invalid(await client.post(keys, headers=h, json={"name": "k", "scopes": []}), "body.scopes")
    invalid(await client.post(keys, headers=h, json={"name": "k", "rate_limit": "lots"}), "body.rate_limit")
    invalid(
        await client.post(keys, headers=h, json={"name": "k", "expires_at": "2000-01-01T00:00:00Z"}),
        "body.expires_at",
    )
    invalid(await client.post(keys, headers=h, json={"name": "k", "key_hash": "0" * 64}), "body.key_hash")
    # A member cannot make a key for someone else.
    assert_refused(
        await client.post(keys, headers=h, json={"name": "k", "user_id": admin.id}), 403, "G2_forbidden"
    )
    assert await snapshot(app) == before


# -- login brute force ----------------------------------------------------------------------------------------

ACCOUNT_LIMIT = 5


async def test_concurrent_wrong_passwords_are_limited_per_account(
    tmp_path: Path, backend: str, pg_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        custom_app(
            tmp_path,
            backend,
            pg_url,
            login_rate_limit_per_account=f"{ACCOUNT_LIMIT}/minute",
            login_rate_limit_per_ip="100000/minute",
            # 200 logins at once on a busy machine can keep Redis answering past the 1 s default, and a
            # Redis call that times out is counted in memory: that fallback has tests of its own.
            redis_timeout_seconds=10.0,
        ) as app,
        client_for(app) as client,
    ):
        victim = await make_account(app, "member")
        bystander = await make_account(app, "member")
        checked = Counter[str]()
        real_verify = passwords.verify_password

        async def counting_verify(password_hash: str | None, password: str) -> bool:
            checked["calls"] += 1
            return await real_verify(password_hash, password)

        monkeypatch.setattr(passwords, "verify_password", counting_verify)
        before = await snapshot(app)

        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/auth/login",
                    json={"username": victim.email, "password": f"guess-{n:03d}-wrong"},
                )
                for n in range(200)
            )
        )
        outcomes = Counter((r.status_code, error_code(r)) for r in responses)
        assert set(outcomes) <= {(401, "G1_login_failed"), (429, "E4_login_rate_limited")}, outcomes
        assert outcomes[(401, "G1_login_failed")] == ACCOUNT_LIMIT
        assert outcomes[(429, "E4_login_rate_limited")] == 200 - ACCOUNT_LIMIT
        assert checked["calls"] <= ACCOUNT_LIMIT  # passwords past the limit are never even hashed
        for response in responses:
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
                assert response.headers["RateLimit-Limit"] == str(ACCOUNT_LIMIT)
                assert response.headers["RateLimit-Remaining"] == "0"

        # The right password is refused while the account is limited, however the name is spelled.
        for username in (victim.email, f"  {victim.email.upper()} "):
            response = await client.post(
                "/api/v1/auth/login", json={"username": username, "password": victim.password}
            )
            assert_refused(response, 429, "E4_login_rate_limited")
        assert checked["calls"] <= ACCOUNT_LIMIT
        assert await snapshot(app) == before

        # The limit is per account: someone else signs in from the same address.
        await login(client, bystander.email, bystander.password)


# -- registration and the password policy ---------------------------------------------------------------------


async def test_registration_closed(tmp_path: Path, backend: str, pg_url: str | None) -> None:
    async with (
        custom_app(tmp_path, backend, pg_url, registration_enabled=False) as app,
        client_for(app) as client,
    ):
        before = await snapshot(app)
        response = await client.post(
            "/api/v1/auth/register", json={"email": "walk-in@example.com", "password": "pw-walk-in-123"}
        )
        assert_refused(response, 403, "G2_registration_closed")
        assert await snapshot(app) == before
        assert await app.state.identity.find_user_by_email("walk-in@example.com") is None


async def test_password_policy_violations_name_body_password(
    app: FastAPI, client: httpx.AsyncClient, admin: Account
) -> None:
    before = await snapshot(app)
    email = "policy-user-1@example.com"
    weak = {
        "short-1": "at least 12 characters",
        "onlylettershereplease": "both letters and digits or symbols",
        "1234567890123456": "both letters and digits or symbols",
        email: "not the email address",
        email.upper(): "not the email address",
    }
    for password, rule in weak.items():
        for path, headers in (("/api/v1/auth/register", {}), ("/api/v1/users", admin.headers)):
            response = await client.post(path, headers=headers, json={"email": email, "password": password})
            assert_refused(response, 422, "E1_validation_error")
            details = response.json()["error"]["details"]
            assert details[0]["field"] == "body.password", details
            assert rule in details[0]["message"]
    too_long = await client.post("/api/v1/auth/register", json={"email": email, "password": "a1" * 200})
    assert_refused(too_long, 422, "E1_validation_error")
    assert too_long.json()["error"]["details"][0]["field"] == "body.password"
    assert await snapshot(app) == before


# -- the first admin ------------------------------------------------------------------------------------------


async def admins(app: FastAPI) -> list[User]:
    async with app.state.runtime.db.session() as session:
        return list((await session.scalars(select(User).where(User.role == "admin"))).all())


async def test_first_admin_is_made_exactly_once(
    app: FastAPI, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = app.state.runtime.settings
    first = await admins(app)
    assert [u.email for u in first] == [settings.first_admin_email]
    async with app.state.runtime.db.session() as session:
        assert await session.scalar(select(func.count()).select_from(User)) == 1

    # Another start on the same database makes none.
    identity = app.state.identity
    assert await ensure_first_admin(identity) is False
    assert [u.id for u in await admins(app)] == [first[0].id]

    # Starts racing on a database with no admin make exactly one, and print its password once.
    async with app.state.runtime.db.transaction() as session:
        await session.execute(delete(User))
    capsys.readouterr()
    made = await asyncio.gather(*(ensure_first_admin(identity) for _ in range(5)))
    assert made.count(True) == 1
    assert len(await admins(app)) == 1
    printed = capsys.readouterr().err
    assert printed.count("password:") == 1
    password = re.search(r"password:\s+(\S+)", printed)
    assert password is not None
    # The printed one-time password signs in.
    await login(client, settings.first_admin_email, password.group(1))


# -- the audit trail ------------------------------------------------------------------------------------------


async def test_security_events_are_audited(tmp_path: Path, backend: str, pg_url: str | None) -> None:
    async with (
        custom_app(tmp_path, backend, pg_url, login_rate_limit_per_account="2/minute") as app,
        client_for(app) as client,
    ):
        admin = await make_account(app, "admin")
        member = await make_account(app, "member")
        member_actor = f"user:{member.id}"

        await login(client, member.email, member.password)  # 1st login: success
        wrong = {"username": member.email, "password": "wrong-password-1"}
        assert_refused(await client.post("/api/v1/auth/login", json=wrong), 401, "G1_login_failed")
        assert_refused(await client.post("/api/v1/auth/login", json=wrong), 429, "E4_login_rate_limited")

        key_id, secret = await create_key(
            client, member.headers, scopes=["read", "write"], rate_limit="2/minute"
        )
        child_id, _ = await create_key(client, key_header(secret), scopes=["read"])
        revoked = await client.delete(f"/api/v1/keys/{child_id}", headers=member.headers)
        assert revoked.status_code == 200
        assert (await client.get("/api/v1/auth/me", headers=key_header(secret))).status_code == 200
        limited = await client.get("/api/v1/auth/me", headers=key_header(secret))  # 3rd use of a 2/minute key
        assert_refused(limited, 429, "E4_rate_limited")
        assert limited.headers["RateLimit-Limit"] == "2"
        assert limited.headers["RateLimit-Remaining"] == "0"
        assert int(limited.headers["Retry-After"]) >= 1
        assert_refused(await client.get("/api/v1/users", headers=member.headers), 403, "G2_forbidden")
        role = await client.put(
            f"/api/v1/users/{member.id}/role", headers=admin.headers, json={"role": "admin"}
        )
        assert role.status_code == 200

        def one(rows: list[dict[str, Any]]) -> dict[str, Any]:
            assert len(rows) == 1, rows
            return rows[0]

        logins = await audit_rows(app, client, admin.headers, action="auth.login")
        success = one([r for r in logins if r["status"] == "ALLOWED"])
        assert (success["actor"], success["target"], success["http_status"]) == (member_actor, member.id, 200)
        failed = one(await audit_rows(app, client, admin.headers, reason_code="G1_login_failed"))
        assert (failed["actor"], failed["action"], failed["status"]) == (
            f"login:{member.email}",
            "auth.login",
            "BLOCKED",
        )
        blocked = one(await audit_rows(app, client, admin.headers, reason_code="E4_login_rate_limited"))
        assert (blocked["actor"], blocked["action"], blocked["http_status"]) == (
            f"login:{member.email}",
            "auth.login",
            429,
        )

        created = await audit_rows(app, client, admin.headers, action="key.create")
        assert {(r["actor"], r["target"]) for r in created} == {
            (member_actor, key_id),
            (f"{member_actor}/key:{key_id}", child_id),
        }
        revoke = one(await audit_rows(app, client, admin.headers, action="key.revoke"))
        assert (revoke["actor"], revoke["target"], revoke["status"]) == (member_actor, child_id, "ALLOWED")

        rate = one(await audit_rows(app, client, admin.headers, reason_code="E4_rate_limited"))
        assert (rate["actor"], rate["route"], rate["http_status"]) == (
            f"{member_actor}/key:{key_id}",
            "/api/v1/auth/me",
            429,
        )
        denied = one(await audit_rows(app, client, admin.headers, reason_code="G2_forbidden"))
        assert (denied["actor"], denied["route"], denied["status"]) == (
            member_actor,
            "/api/v1/users",
            "BLOCKED",
        )

        change = one(await audit_rows(app, client, admin.headers, action="user.role_change"))
        assert (change["actor"], change["target"], change["route"]) == (
            f"user:{admin.id}",
            member.id,
            f"/api/v1/users/{member.id}/role",
        )
        # Filters by actor find the key's own rows.
        by_key = await audit_rows(app, client, admin.headers, actor=f"{member_actor}/key:{key_id}")
        assert len(by_key) == 3
        assert (await verify(app.state.runtime.db)).ok
