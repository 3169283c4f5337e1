"""Latency and throughput of a guard policy's input and output guards on texts of 100, 1,000 and 10,000
characters: in process, one check at a time, pinned to one core, through the real pipeline
(``Pipeline.run``: loading aside, exactly what a gateway request pays).

Texts are real ones from the guards' dev sets (``../shared/eval``): input texts from the injection,
toxicity, PII and secrets sets, answers and their sources from the grounding set, joined and cut to length,
a different slice for every check. Each policy runs in three modes, so the thread-hop rule is measured rather
than assumed: ``auto`` (CPU-bound guards on the event loop up to the policy's ``thread_above_chars``, in one
worker thread above), ``inline`` (never a thread) and ``thread`` (always one thread hop). ``stall p99`` is
how late a 1 ms timer on the same event loop fired (99th percentile): how long every other request (and
every stream) of the process waits while the guards run.

The policy is also measured without the guards named by ``--without`` (default: pii, whose cost is its own
story), mode ``auto``, so both figures are in one report. Last, the scoring throughput of every task
(``aiguardian guards score``'s scorer on the task's dev set, in process, start-up and model loading aside).

    .venv/bin/python bench/guards/run.py                     # the shipped default policy
    .venv/bin/python bench/guards/run.py --policy my.yaml --repeat 300
    .venv/bin/python bench/guards/run.py --modes auto --sizes 1000 --tasks injection,secrets

A guard that fails (its module is missing, it raises) shows in the ``failed`` column: its time is then not
a real check's and the row says so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from aiguardian.guards.base import Direction, GuardContext
from aiguardian.guards.loader import GuardLoader
from aiguardian.guards.pipeline import Pipeline, VerdictCache
from aiguardian.guards.policy import Entry, PolicySet, parse, shipped
from aiguardian.guards.remote import RemoteGuards
from aiguardian.guards.tasks import TASKS, task_module

REPO = Path(__file__).resolve().parents[2]
SIZES = (100, 1_000, 10_000)
INPUT_SETS = ("injection", "toxicity", "pii", "secrets")
MODES = {"auto": None, "inline": 10**12, "thread": -1}


def records(data: Path, task: str) -> list[dict[str, Any]]:
    path = data / task / "dev.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def texts(pool: list[str], size: int) -> Iterator[str]:
    """Endless texts of exactly ``size`` characters, each starting further along the joined pool."""
    joined = "\n\n".join(pool)
    while len(joined) < 2 * size:
        joined += "\n\n" + joined
    start = 0
    step = max(1, size // 3)
    while True:
        if start + size > len(joined):
            start = 0
        yield joined[start : start + size]
        start += step


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(
    pipeline: Pipeline,
    policies: PolicySet,
    entries: tuple[Entry, ...],
    direction: Direction,
    size: int,
    pool: list[str],
    sources: list[str],
    repeat: int,
    thread_above: int | None,
) -> dict[str, Any]:
    threshold = policies.file.thread_above_chars if thread_above is None else thread_above
    source_texts = texts(sources, min(size, 4000)) if sources else None
    feed = texts(pool, size)
    per_guard: dict[str, list[float]] = defaultdict(list)
    failed: set[str] = set()
    timings: list[float] = []
    stalls: list[float] = []

    async def ticker() -> None:
        """How late a 1 ms timer fires: what every other request on this event loop waits."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(max(0.0, (time.perf_counter() - started) * 1000 - 1))

    ticking = asyncio.get_running_loop().create_task(ticker())
    for i in range(repeat + max(3, repeat // 10)):  # the first few warm up (and load the guards)
        context = GuardContext(text=next(feed), direction=direction)
        if source_texts is not None:
            context.sources = [next(source_texts)]
        started = time.perf_counter()
        decision = await pipeline.run(entries, context, thread_above_chars=threshold, count=False)
        took = (time.perf_counter() - started) * 1000
        await asyncio.sleep(0.002)  # a gap between requests, as the network gives one: the timer's turn
        if i < max(3, repeat // 10):
            continue
        timings.append(took)
        for verdict in decision.verdicts:
            per_guard[verdict.guard].append(verdict.elapsed_ms)
            if any(code.startswith("GUARD_") for code in verdict.reason_codes):
                failed.add(verdict.guard)
    ticking.cancel()
    mean = statistics.fmean(timings)
    return {
        "stall": percentile(stalls, 0.99) if stalls else 0.0,
        "p50": percentile(timings, 0.5),
        "p99": percentile(timings, 0.99),
        "mean": mean,
        "per_core": 1000 / mean if mean else float("inf"),
        "guards": {name: statistics.fmean(values) for name, values in per_guard.items()},
        "failed": sorted(failed),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", type=Path, help="A policy file (default: the shipped default policy).")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "eval", help="shared/eval")
    parser.add_argument("--repeat", type=int, default=200, help="Checks per size and mode (fewer for 10k).")
    parser.add_argument("--cpu", type=int, default=None, help="Pin to this CPU (default: the first allowed).")
    parser.add_argument("--modes", default="auto,inline,thread", help="Which of auto, inline, thread.")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="Text lengths, comma-separated.")
    parser.add_argument(
        "--without", default="pii", help="Guards left out in the extra 'auto' rows ('' none)."
    )
    parser.add_argument("--tasks", default=",".join(TASKS), help="Tasks whose scoring throughput to measure.")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size]
    without = {name for name in args.without.split(",") if name}

    allowed = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else allowed[0]
    os.sched_setaffinity(0, {cpu})
    policies = parse(args.policy.read_text(), str(args.policy)) if args.policy else shipped()
    inputs = [r["text"] for task in INPUT_SETS for r in records(args.data, task)]
    grounding = records(args.data, "grounding")
    answers = [r["response"] for r in grounding]
    sources = [r["context"] for r in grounding]

    remote = RemoteGuards()
    # No verdict cache: the variants below check the same texts again, and every check must be a real one.
    pipeline = Pipeline(GuardLoader(), remote, cache=VerdictCache(size=0))
    console = Console()
    console.print(
        f"guards bench: policy {policies.source} (thread_above_chars={policies.file.thread_above_chars}), "
        f"CPU {cpu} of {len(allowed)} allowed, Python {platform.python_version()}, {platform.machine()}",
        highlight=False,
    )
    results: list[tuple[str, int, str, dict[str, Any]]] = []
    for direction, pool, srcs in ((Direction.INPUT, inputs, []), (Direction.OUTPUT, answers, sources)):
        entries = policies.named("default").entries(direction)
        fewer = tuple(e for e in entries if e.label not in without)
        variants = [(mode, entries, MODES[mode]) for mode in args.modes.split(",")]
        if without and len(fewer) < len(entries):
            variants.append((f"auto, no {','.join(sorted(without))}", fewer, None))
        for size in sizes:
            repeat = args.repeat if size < 10_000 else max(20, args.repeat // 4)
            for mode, chosen, thread_above in variants:
                result = await measure(
                    pipeline, policies, chosen, direction, size, pool, srcs, repeat, thread_above
                )
                results.append((direction.value, size, mode, result))
    await remote.close()

    table = Table(title="guard policy latency, one check at a time on one core (ms)")
    for column in (
        "direction",
        "chars",
        "mode",
        "p50",
        "p99",
        "mean",
        "checks/s/core",
        "stall p99",
        "failed",
    ):
        table.add_column(column, justify="left" if column in ("direction", "mode") else "right")
    for direction_name, size, mode, r in results:
        table.add_row(
            direction_name,
            f"{size:,}",
            mode,
            f"{r['p50']:.3f}",
            f"{r['p99']:.3f}",
            f"{r['mean']:.3f}",
            f"{r['per_core']:,.0f}",
            f"{r['stall']:.1f}",
            str(len(r["failed"])) if r["failed"] else "-",
        )
    console.print(table)
    failing = sorted({name for *_, r in results for name in r["failed"]})
    if failing:
        console.print(f"[red]failed[/red] (not a real check's time): {', '.join(failing)}", highlight=False)

    guards = Table(title="mean ms per guard (mode auto)")
    guards.add_column("direction")
    guards.add_column("guard")
    for size in sizes:
        guards.add_column(f"{size:,} chars", justify="right")
    for direction_name in ("input", "output"):
        rows = [r for d, _, mode, r in results if d == direction_name and mode == "auto"]
        names = list(rows[0]["guards"]) if rows else []
        for name in names:
            guards.add_row(direction_name, name, *(f"{r['guards'].get(name, 0):.3f}" for r in rows))
    console.print(guards)

    tasks = [task for task in args.tasks.split(",") if task]
    if tasks:
        console.print(throughput(args.data, tasks))


def throughput(data: Path, tasks: list[str]) -> Table:
    """Records per second of each task's scorer on its dev set, in batches of 256 as ``guards score`` reads
    them; the best of three passes (the first also warms up)."""
    table = Table(title="scoring throughput, in process on one core (guards score's scorer, dev sets)")
    for column in ("task", "records", "load ms", "records/s"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task in tasks:
        rows = [
            {k: v for k, v in r.items() if k not in ("label", "spans", "source", "category")}
            for r in records(data, task)
        ]
        started = time.perf_counter()
        try:
            scorer = task_module(task).scorer()
        except Exception as exc:  # a model being retrained by someone else: say so, measure the rest
            table.add_row(task, f"{len(rows):,}", "-", f"failed: {type(exc).__name__}")
            continue
        load = time.perf_counter() - started
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for i in range(0, len(rows), 256):
                scorer(rows[i : i + 256])
            best = min(best, time.perf_counter() - started)
        table.add_row(task, f"{len(rows):,}", f"{load * 1000:.0f}", f"{len(rows) / best:,.0f}")
    return table


if __name__ == "__main__":
    asyncio.run(main())
