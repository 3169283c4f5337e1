"""CPU per request of one AIGuardian worker on the chat hot path, for before/after comparisons in one run.

Wall-clock figures on a shared machine swing with whatever else runs; the server process's own CPU time
per request does much less, so that is the figure to compare. Each variant (a source tree: the working
tree, or a git revision exported to a temporary directory) gets a fresh database, one ``aiguardian serve``
worker in front of the shared mock upstream, and wrk at each concurrency; variants alternate round by round
so that drifting load hits them alike. Reported per variant (median over rounds): server CPU µs per request
and requests/s at each concurrency, and the ``X-AIG-Overhead-Ms`` header over sequential requests.

  bench/gateway/profile_hot_path.py                           # working tree, PostgreSQL + Redis
  bench/gateway/profile_hot_path.py --rev HEAD~3 --rev .      # before/after, alternated
  bench/gateway/profile_hot_path.py --rev /tmp/a/src --rev /tmp/b/src   # two source trees
  bench/gateway/profile_hot_path.py --backend sqlite --rounds 5
  bench/gateway/profile_hot_path.py --py-spy /tmp/prof.txt     # plus a raw py-spy profile (last variant)
  bench/gateway/profile_hot_path.py --rev HEAD~3 --rev . --rounds 1 --callgrind 200
      # instructions per request under valgrind: repeatable to a few %, slow (minutes per variant)

Needs wrk, psql (for PostgreSQL), and ../shared/bench beside the repository (mock upstream, chat.lua).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO.parent / "shared" / "bench"
KEY = "sk-profile-1234567890"
MODEL = "gpt-4o-mini"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    cpu_us: dict[int, float] = field(default_factory=dict)
    rps: dict[int, float] = field(default_factory=dict)
    p50_ms: dict[int, float] = field(default_factory=dict)
    overhead_ms: list[float] = field(default_factory=list)
    instructions: float = 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"nothing answers on port {port}{path}")


def export_revision(rev: str, into: Path) -> Path:
    """``src/`` of a git revision, extracted to a directory that PYTHONPATH can put first."""
    target = into / rev.replace("/", "_").replace("~", "-").replace("^", "-")
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "src"], check=True, capture_output=True
    ).stdout
    archive_path = target / "src.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(target, filter="data")
    return target / "src"


def source_tree(rev: str, exported: Path) -> Path:
    if rev == ".":
        return REPO / "src"
    if (Path(rev) / "aiguardian").is_dir():
        return Path(rev).resolve()
    return export_revision(rev, exported)


@contextlib.contextmanager
def database(backend: str, admin_url: str) -> Iterator[dict[str, str]]:
    if backend == "sqlite":
        yield {}
        return
    name = f"aig_prof_{uuid.uuid4().hex[:10]}"
    subprocess.run(["psql", admin_url, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        yield {"DATABASE_URL": admin_url.rsplit("/", 1)[0] + "/" + name}
    finally:
        subprocess.run(
            ["psql", admin_url, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True
        )


def wrk(port: int, conns: int, seconds: float) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{round(seconds)}s", "-s", str(HARNESS / "chat.lua"), url],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GW_KEY": KEY, "GW_MODEL": MODEL},
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    result: dict[str, float] = json.loads(line[len("WRKJSON ") :])
    if result["err_status"] or result["err_connect"] or result["err_read"]:
        raise SystemExit(f"wrk saw errors: {line}")
    return result


def overheads(port: int, count: int, timeout: float = 10) -> list[float]:
    """``X-AIG-Overhead-Ms`` of ``count`` sequential requests on one kept-alive connection."""
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 32}
    )
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    seen: list[float] = []
    for _ in range(count):
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"chat answered {response.status}")
        seen.append(float(response.headers["X-AIG-Overhead-Ms"]))
    conn.close()
    return seen


def run_variant(src: Path, args: argparse.Namespace, upstream: int, spy: Path | None) -> Sample:
    work = Path(tempfile.mkdtemp(prefix="aig-prof-"))
    port = free_port()
    config = work / "config.yaml"
    config.write_text(
        f"deployments:\n  - model: {MODEL}\n    provider: openai\n"
        f"    base_url: http://127.0.0.1:{upstream}/v1\n    api_key_env: UPSTREAM_KEY\n"
        "demo_model_enabled: false\n"
    )
    sample = Sample()
    with database(args.backend, args.pg_admin_url) as db_env:
        env = {
            **os.environ,
            **db_env,
            "PYTHONPATH": str(src),
            "AIG_CONFIG_FILE": str(config),
            "AIG_DATA_DIR": str(work / "data"),
            "AIG_SECRET_KEY": "profile-secret-" + uuid.uuid4().hex,
            "AIG_LOG_LEVEL": args.log_level,
            "AIG_CACHE_NAMESPACE": f"prof-{uuid.uuid4().hex[:8]}",
            "AIG_RATE_LIMIT_PER_IP": "100000000/minute",
            "UPSTREAM_KEY": "x",
        }
        if args.backend == "pg":
            env["REDIS_URL"] = args.redis_url
        if args.callgrind and (policy := patient_guard_policy(src, work)) is not None:
            env["AIG_GUARDS_POLICY_FILE"] = str(policy)
        cli = [sys.executable, "-m", "aiguardian"]
        unlimited = ["--rate-limit", "100000000/minute"]
        for command in (
            ["create-user", "--email", "p@example.com", "--password", "profile-password-123"],
            ["create-key", "--email", "p@example.com", "--scopes", "chat", "--secret", KEY, *unlimited],
        ):
            subprocess.run([*cli, "admin", *command], env=env, cwd=work, check=True, capture_output=True)
        log = (work / "serve.log").open("w")
        grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/cg.out"]
        serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        server = subprocess.Popen(
            [*grind, *serve] if args.callgrind else serve,
            env=env,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_http(port, "/healthz", timeout=600 if args.callgrind else 30)
            if args.callgrind:
                sample.instructions = instructions_per_request(server.pid, port, work, args.callgrind)
                return sample
            wrk(port, 10, args.warmup)
            for conns in args.conns:
                before = cpu_seconds(server.pid)
                result = wrk(port, conns, args.duration)
                spent = cpu_seconds(server.pid) - before
                sample.cpu_us[conns] = spent / max(1, result["requests"]) * 1e6
                sample.rps[conns] = result["rps"]
                sample.p50_ms[conns] = result["p50_ms"]
            sample.overhead_ms = overheads(port, args.overhead_requests)
            if spy is not None:
                spy_args = ["-d", str(int(args.duration)), "-r", "200", "-f", "raw", "-o", str(spy)]
                recorder = subprocess.Popen(
                    [args.py_spy_bin, "record", "-p", str(server.pid), *spy_args],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                wrk(port, 10, args.duration)
                recorder.wait()
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.close()
            shutil.rmtree(work, ignore_errors=True)
    return sample


def patient_guard_policy(src: Path, into: Path) -> Path | None:
    """The tree's shipped guard policy with every guard's timeout raised: under callgrind everything runs
    some fifty times slower, and a guard past its timeout fails closed (the request is refused)."""
    shipped = src / "aiguardian" / "guards" / "policies" / "default.yaml"
    if not shipped.exists():
        return None
    policy_file = yaml.safe_load(shipped.read_text())
    for policy in policy_file.get("policies", {}).values():
        for direction in ("input", "output", "stream"):
            entries = policy.get(direction)
            if isinstance(entries, list):
                policy[direction] = [
                    {**({"guard": entry} if isinstance(entry, str) else entry), "timeout_ms": 600_000}
                    for entry in entries
                ]
    path = into / "guards.yaml"
    path.write_text(yaml.safe_dump(policy_file))
    return path


def instructions_per_request(pid: int, port: int, work: Path, count: int) -> float:
    """Instructions the server executes per sequential request, under callgrind: exactly repeatable, unlike
    CPU time on a busy machine, but blind to time spent in the kernel (fewer round trips show less)."""
    overheads(port, 30, timeout=300)  # warm: connection pools, caches, lazily compiled queries
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
    overheads(port, count, timeout=300)
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    dump = max(work.glob("cg.out.*"), key=lambda f: f.stat().st_mtime)
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1]) / count
    raise SystemExit(f"no totals in {dump}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--rev",
        action="append",
        help="a git revision to compare, '.' for the working tree, or a directory holding aiguardian/",
    )
    parser.add_argument("--backend", choices=["pg", "sqlite"], default="pg", help="pg = PostgreSQL + Redis")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of wrk per concurrency")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--conns", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    parser.add_argument("--overhead-requests", type=int, default=300)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument(
        "--callgrind", type=int, metavar="N", help="instead: instructions per request over N requests"
    )
    parser.add_argument("--py-spy", type=Path, help="write a raw py-spy profile of the last variant here")
    parser.add_argument("--py-spy-bin", default=os.environ.get("PY_SPY", "/tmp/tools/bin/py-spy"))
    args = parser.parse_args()

    revs = args.rev or ["."]
    exported = Path(tempfile.mkdtemp(prefix="aig-prof-src-"))
    sources = {rev: source_tree(rev, exported) for rev in revs}
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HARNESS / "mock_upstream.py"), "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: dict[str, list[Sample]] = {rev: [] for rev in revs}
    try:
        wait_http(upstream_port, "/health")
        for round_no in range(args.rounds):
            order = revs if round_no % 2 == 0 else list(reversed(revs))
            for rev in order:
                last = round_no == args.rounds - 1 and rev == order[-1]
                sample = run_variant(sources[rev], args, upstream_port, args.py_spy if last else None)
                samples[rev].append(sample)
                cpu = " ".join(f"c{c}={us:.0f}us" for c, us in sample.cpu_us.items())
                if args.callgrind:
                    cpu = f"{sample.instructions:,.0f} instructions/request"
                print(f"round {round_no + 1} {rev}: {cpu}", file=sys.stderr, flush=True)
    finally:
        upstream.terminate()
        upstream.wait()
        shutil.rmtree(exported, ignore_errors=True)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    if args.callgrind:
        print(f"backend={args.backend} instructions per request over {args.callgrind} sequential requests")
        for rev, runs in samples.items():
            print(f"{rev}\t{med([s.instructions for s in runs]):,.0f}")
        return
    print(f"backend={args.backend} rounds={args.rounds} duration={args.duration}s (medians over rounds)")
    header = ["variant"]
    for c in args.conns:
        header += [f"cpu_us@{c}", f"rps@{c}", f"p50_ms@{c}"]
    header += ["overhead_p50_ms", "overhead_p90_ms"]
    print("\t".join(header))
    for rev, runs in samples.items():
        row = [rev]
        for c in args.conns:
            row += [
                f"{med([s.cpu_us[c] for s in runs]):.0f}",
                f"{med([s.rps[c] for s in runs]):.0f}",
                f"{med([s.p50_ms[c] for s in runs]):.2f}",
            ]
        all_overheads = sorted(x for s in runs for x in s.overhead_ms)
        row += [
            f"{med(all_overheads):.3f}",
            f"{all_overheads[int(len(all_overheads) * 0.9)]:.3f}",
        ]
        print("\t".join(row))


if __name__ == "__main__":
    main()
