"""Start-up time and idle memory of ``aiguardian serve``, against bare uvicorn + FastAPI, in one run.

Cases, interleaved REPEAT times so that drift on the machine hits them alike:

- ``aiguardian first run``: a fresh directory each time (creates the data dir and secrets, migrates SQLite);
- ``aiguardian warm``: one directory initialised beforehand (the database is already at head);
- ``bare FastAPI``: ``python -m uvicorn`` serving a one-route FastAPI app written to a temp dir;
- ``import fastapi, uvicorn``: ``python -c "import fastapi, uvicorn"``, the floor under both (exit time only).

Start time is from just before the process is spawned to the first 200 on ``/healthz``. Idle RSS is read
with psutil after ``--idle`` seconds without requests, summed over the process and its children. Each server
is stopped with SIGTERM (SIGKILL only after ``--stop-timeout``). Everything listens on 127.0.0.1 and only
processes started here are signalled.

    .venv/bin/python bench/startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# Settings the server would otherwise take from the caller's shell: every case runs on the defaults.
_PLAIN_SETTINGS = frozenset(
    {"DATABASE_URL", "REDIS_URL", "API_PORT", "CIRCUIT_BREAKER_THRESHOLD", "CACHE_TTL"}
)

BARE_APP = """\
from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
"""


class BenchError(Exception):
    """A case could not be measured; the message says why."""


@dataclass
class Samples:
    starts: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def clean_env() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("AIG_") and name.upper() not in _PLAIN_SETTINGS
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    total = process.memory_info().rss
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += child.memory_info().rss
    return total


def log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM our process; if it has not exited in time, SIGKILL it and whatever it started."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.is_running():
                child.kill()


def measure_server(
    command: list[str], cwd: Path, port: int, *, start_timeout: float, idle: float, stop_timeout: float
) -> tuple[float, float]:
    """Spawn ``command`` in ``cwd``; return (seconds to the first 200 on /healthz, idle RSS in MB)."""
    url = f"http://{HOST}:{port}/healthz"
    log_path = cwd / f"server-{port}.log"
    with log_path.open("wb") as log, httpx.Client(timeout=0.5) as client:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=cwd, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = started + start_timeout
            while True:
                if proc.poll() is not None:
                    raise BenchError(f"exited with {proc.returncode} before answering:\n{log_tail(log_path)}")
                if time.perf_counter() > deadline:
                    raise BenchError(f"no 200 on {url} within {start_timeout}s:\n{log_tail(log_path)}")
                try:
                    if client.get(url).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            time.sleep(idle)
            rss = tree_rss(proc.pid) / 2**20
        finally:
            stop(proc, stop_timeout)
    return elapsed, rss


def measure_import(python: Path, cwd: Path, timeout: float) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(python), "-c", "import fastapi, uvicorn"],
        cwd=cwd,
        env=clean_env(),
        check=True,
        timeout=timeout,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def fmt(values: list[float], digits: int) -> tuple[str, str, str]:
    if not values:
        return "-", "-", "-"
    return (
        f"{statistics.median(values):.{digits}f}",
        f"{min(values):.{digits}f}",
        f"{max(values):.{digits}f}",
    )


def print_table(results: dict[str, Samples]) -> None:
    header = ("case", "median start s", "min s", "max s", "median idle RSS MB")
    rows = []
    for name, samples in results.items():
        median, low, high = fmt(samples.starts, 3)
        rss = f"{statistics.median(samples.rss_mb):.1f}" if samples.rss_mb else "-"
        rows.append((name, median, low, high, rss))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        first, *rest = zip(cells, widths, strict=True)
        return "  ".join([f"{first[0]:<{first[1]}}", *(f"{cell:>{w}}" for cell, w in rest)])

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def print_ratios(results: dict[str, Samples], baseline: str) -> None:
    base = results[baseline]
    if not base.starts:
        return
    base_start = statistics.median(base.starts)
    base_rss = statistics.median(base.rss_mb)
    for name, samples in results.items():
        if name == baseline or not samples.starts or not samples.rss_mb:
            continue
        start_ratio = statistics.median(samples.starts) / base_start
        rss_ratio = statistics.median(samples.rss_mb) / base_rss
        print(f"{name} / {baseline}: start x{start_ratio:.2f}, idle RSS x{rss_ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="starts per case (default 5)")
    parser.add_argument(
        "--venv",
        type=Path,
        default=REPO / ".venv",
        help="virtualenv with aiguardian installed (default ./.venv)",
    )
    parser.add_argument("--idle", type=float, default=2.0, help="seconds idle before reading RSS (default 2)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per start (default 30)")
    parser.add_argument(
        "--stop-timeout", type=float, default=15.0, help="seconds after SIGTERM before SIGKILL (default 15)"
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    bindir = args.venv / "bin"
    aiguardian, python = bindir / "aiguardian", bindir / "python"
    for exe in (aiguardian, python):
        if not os.access(exe, os.X_OK):
            parser.error(f"{exe} not found: run `make install` or pass --venv")

    options = {"start_timeout": args.timeout, "idle": args.idle, "stop_timeout": args.stop_timeout}

    def serve(port: int) -> list[str]:
        return [str(aiguardian), "serve", "--host", HOST, "--port", str(port)]

    def bare(port: int) -> list[str]:
        return [str(python), "-m", "uvicorn", "app:app", "--host", HOST, "--port", str(port)]

    cases = {"aiguardian first run": serve, "aiguardian warm": serve, "bare FastAPI": bare}
    results = {name: Samples() for name in (*cases, "import fastapi, uvicorn")}

    print(
        f"python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {args.repeat} starts per case, idle {args.idle:g}s before RSS",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="aig-bench-") as tmp:
        root = Path(tmp)
        warm_dir, bare_dir = root / "warm", root / "bare"
        warm_dir.mkdir()
        bare_dir.mkdir()
        (bare_dir / "app.py").write_text(BARE_APP)
        try:
            port = free_port()
            measure_server(serve(port), warm_dir, port, **options)  # initialises the warm dir; not counted
            for round_no in range(1, args.repeat + 1):
                for name, command in cases.items():
                    if name == "aiguardian first run":
                        cwd = root / f"first-{round_no}"
                        cwd.mkdir()
                    else:
                        cwd = warm_dir if name == "aiguardian warm" else bare_dir
                    port = free_port()
                    elapsed, rss = measure_server(command(port), cwd, port, **options)
                    results[name].starts.append(elapsed)
                    results[name].rss_mb.append(rss)
                results["import fastapi, uvicorn"].starts.append(
                    measure_import(python, bare_dir, args.timeout)
                )
                print(f"round {round_no}/{args.repeat} done", file=sys.stderr, flush=True)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print()
    print_table(results)
    print()
    print_ratios(results, "bare FastAPI")
    return 0


if __name__ == "__main__":
    sys.exit(main())
