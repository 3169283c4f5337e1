"""`aiguardian admin ...`: accounts and keys made on the command line work against the server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from aiguardian.app import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.slow


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIG_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["AIG_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "aiguardian", "admin", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def printed(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.startswith(label):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{label} not printed in {output!r}")


async def test_cli_accounts_keys_and_resets_work_against_the_server(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, "sqlite", None)
    made = cli(settings.data_dir, "create-user", "--email", "Ops@Example.com", "--role", "admin")
    assert made.returncode == 0, made.stderr
    password = printed(made.stdout, "password")
    keyed = cli(settings.data_dir, "create-key", "--email", "ops@example.com", "--scopes", "read,admin")
    assert keyed.returncode == 0, keyed.stderr
    key = keyed.stdout.strip().splitlines()[-1]
    assert key.startswith("aig_")

    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            login = await http.post(
                "/api/v1/auth/login", data={"username": "ops@example.com", "password": password}
            )
            assert login.status_code == 200, login.text
            users = await http.get("/api/v1/users", headers={"X-API-Key": key})
            assert users.status_code == 200, users.text
            emails = {u["email"] for u in users.json()["data"]["items"]}
            assert "ops@example.com" in emails
            assert "admin@aiguardian.local" not in emails, "no first admin is made when an admin exists"

    reset = cli(settings.data_dir, "reset-password", "--email", "ops@example.com")
    assert reset.returncode == 0, reset.stderr
    new_password = printed(reset.stdout, "password")
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            old = await http.post(
                "/api/v1/auth/login", data={"username": "ops@example.com", "password": password}
            )
            assert old.status_code == 401
            new = await http.post(
                "/api/v1/auth/login", data={"username": "ops@example.com", "password": new_password}
            )
            assert new.status_code == 200


def test_cli_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    weak = cli(tmp_path, "create-user", "--email", "a@example.com", "--password", "short")
    assert weak.returncode == 1
    assert "password must have" in weak.stderr
    assert "Traceback" not in weak.stderr
    unknown = cli(tmp_path, "create-key", "--email", "nobody@example.com")
    assert unknown.returncode == 1
    assert "no account" in unknown.stderr
    scopes = cli(tmp_path, "create-key", "--email", "a@example.com", "--scopes", "root")
    assert scopes.returncode == 2
    duplicate = cli(tmp_path, "create-user", "--email", "b@example.com")
    assert duplicate.returncode == 0
    again = cli(tmp_path, "create-user", "--email", "B@example.com")
    assert again.returncode == 1
    assert "already exists" in again.stderr
