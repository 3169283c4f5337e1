"""Rate limits on credentialed requests: every request counts against its client IP and its credential,
a made-up credential counts against the IP before any lookup, and the headers are the credential's."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import make_account
from tests.identity import assert_refused, client_for, create_key, custom_app, key_header


async def test_a_key_answers_with_its_own_limit_and_the_ip_limit_still_applies(
    tmp_path: Path, backend: str, pg_url: str | None
) -> None:
    async with custom_app(tmp_path, backend, pg_url, rate_limit_per_ip="7/minute") as app:
        member = await make_account(app)
        async with client_for(app) as client:
            _, secret = await create_key(client, member.headers, scopes=["read"], rate_limit="4/minute")
            _, other = await create_key(client, member.headers, scopes=["read"])
            served = [await client.get("/api/v1/auth/me", headers=key_header(secret)) for _ in range(4)]
            assert [r.status_code for r in served] == [200] * 4
            assert [r.headers["RateLimit-Limit"] for r in served] == ["4"] * 4
            assert [int(r.headers["RateLimit-Remaining"]) for r in served] == [3, 2, 1, 0]

            by_key = await client.get("/api/v1/auth/me", headers=key_header(secret))
            assert_refused(by_key, 429, "E4_rate_limited")
            assert by_key.headers["RateLimit-Limit"] == "4"
            assert int(by_key.headers["Retry-After"]) >= 1

            # Two key creations and five requests with the first key: the IP's seven.
            by_ip = await client.get("/api/v1/auth/me", headers=key_header(other))
            assert_refused(by_ip, 429, "E4_rate_limited")
            assert by_ip.headers["RateLimit-Limit"] == "7"
            assert by_ip.headers["RateLimit-Remaining"] == "0"


async def test_made_up_keys_are_counted_against_the_ip(
    tmp_path: Path, backend: str, pg_url: str | None
) -> None:
    async with (
        custom_app(tmp_path, backend, pg_url, rate_limit_per_ip="3/minute") as app,
        client_for(app) as client,
    ):
        guesses = [
            await client.get("/api/v1/auth/me", headers=key_header(f"aig_made-up-key-{n:04d}"))
            for n in range(4)
        ]
        for guess in guesses[:3]:
            assert_refused(guess, 401, "G1_auth_invalid")
        assert_refused(guesses[3], 429, "E4_rate_limited")
        assert guesses[3].headers["RateLimit-Limit"] == "3"
