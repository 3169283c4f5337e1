"""Stop the real local PostgreSQL under a running AIGuardian and time the fail-fast and the recovery.

This stops and starts the machine's PostgreSQL cluster (Debian's pg_ctlcluster), so it refuses to run
unless told `--yes-stop-my-postgres`. The test suite covers the same path without touching the shared
server (tests/e2e/test_faults.py, through a TCP proxy); this is the real thing, for the closing note.

    .venv/bin/python bench/ops/postgres_outage.py --yes-stop-my-postgres
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.server import ServerProcess

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def psql(sql: str) -> None:
    subprocess.run(["psql", ADMIN_URL, "-qc", sql], check=True, capture_output=True)


def cluster(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--yes-stop-my-postgres", action="store_true", required=True)
    parser.parse_args()
    db = f"aig_outage_{os.getpid()}"
    psql(f"CREATE DATABASE {db}")
    server = ServerProcess(
        Path(tempfile.mkdtemp()),
        env={
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db}",
            "AIG_CIRCUIT_BREAKER_THRESHOLD": "3",
            "AIG_CIRCUIT_BREAKER_RESET_SECONDS": "2",
            "AIG_DB_TIMEOUT_SECONDS": "3",
        },
    )
    try:
        server.start()
        print(f"ready in {server.wait_healthy():.2f} s")
        time.sleep(0.5)
        logs = server.logs()
        email = re.search(r"email:\s+(\S+)", logs).group(1)  # type: ignore[union-attr]
        password = re.search(r"password:\s+(\S+)", logs).group(1)  # type: ignore[union-attr]
        login = httpx.post(
            server.base_url + "/api/v1/auth/login", data={"username": email, "password": password}
        )
        headers = {"Authorization": f"Bearer {login.json()['data']['access_token']}"}
        url = server.base_url + "/api/v1/audit?limit=1"
        print("before the outage:", httpx.get(url, headers=headers).status_code)
        cluster("stop")
        try:
            for n in range(1, 9):
                started = time.monotonic()
                answer = httpx.get(url, headers=headers, timeout=20)
                code = answer.json()["error"]["code"] if answer.status_code != 200 else ""
                print(
                    f"  outage request {n}: {answer.status_code} {code} in {1000 * (time.monotonic() - started):.1f} ms"
                )
            print("  /readyz:", httpx.get(server.base_url + "/readyz").status_code)
            status = httpx.get(server.base_url + "/api/v1/status").json()["data"]
            print("  breaker:", status["components"]["database"]["detail"]["breaker"]["state"])
        finally:
            cluster("start")
        back = time.monotonic()
        deadline = back + 60
        while httpx.get(url, headers=headers, timeout=20).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("no recovery within 60 s")
            time.sleep(0.1)
        print(f"first 200 {time.monotonic() - back:.2f} s after PostgreSQL was started again")
        print("/readyz:", httpx.get(server.base_url + "/readyz").status_code)
    finally:
        server.stop()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


if __name__ == "__main__":
    main()
