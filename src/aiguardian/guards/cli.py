"""``aiguardian guards train|score|eval``: build the shipped models and score them on JSON lines.

``score`` is timed from the outside, start-up included (``shared/eval/evaluate.py``): it imports the task's
module and orjson, nothing else (rich only for an error message).
"""

from __future__ import annotations

import sys
import time
from functools import cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from aiguardian.guards.tasks import MODELS_DIR, SPAN_TASKS, TASKS, task_module

if TYPE_CHECKING:
    from rich.console import Console

guards_app = typer.Typer(help="Train, score and evaluate the guards' models.", no_args_is_help=True)


@cache
def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


DEFAULT_DATA = Path("../shared/eval")
BATCH = 256

TaskArg = Annotated[str, typer.Argument(help=f"One of: {', '.join(TASKS)}.")]


def _check_task(task: str) -> None:
    if task not in TASKS:
        _console().print(
            f"[red]error:[/red] unknown task {task!r}; one of {', '.join(TASKS)}", highlight=False
        )
        raise typer.Exit(2)


def _batches(lines: Any) -> Any:
    records = (orjson.loads(line) for line in lines if line.strip())
    while batch := list(islice(records, BATCH)):
        yield batch


@guards_app.command("score")
def score(task: TaskArg) -> None:
    """Read JSON lines on stdin; write one JSON line per record on stdout, in the same order."""
    _check_task(task)
    score_stdin(task)


def score_stdin(task: str) -> None:
    """``guards score TASK`` itself; ``aiguardian.cli.main`` calls it without typer's dispatch."""
    scorer = task_module(task).scorer()
    out = sys.stdout.buffer
    for batch in _batches(sys.stdin.buffer):
        out.write(b"".join(orjson.dumps(result) + b"\n" for result in scorer(batch)))
        out.flush()


@guards_app.command("eval")
def evaluate(
    task: TaskArg,
    data: Annotated[Path, typer.Option(help="A JSONL file in the format of shared/eval.")],
) -> None:
    """Print precision, recall, F1, false-positive rate and throughput of a task's model on a labelled set."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from aiguardian.guards.evaluation import binary_scores, span_scores

    _check_task(task)
    console = _console()
    gold = [orjson.loads(line) for line in data.read_bytes().splitlines() if line.strip()]
    scorer = task_module(task).scorer()
    predicted: list[dict[str, Any]] = []
    started = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(f"scoring {task}", total=len(gold))
        for i in range(0, len(gold), BATCH):
            batch = [
                {k: v for k, v in r.items() if k not in ("label", "spans", "source", "category")}
                for r in gold[i : i + BATCH]
            ]
            predicted.extend(scorer(batch))
            progress.advance(bar, len(batch))
    elapsed = time.perf_counter() - started
    scores = span_scores(gold, predicted) if task in SPAN_TASKS else binary_scores(gold, predicted)
    table = Table(title=f"{task} on {data} ({len(gold)} records)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in scores.as_dict().items():
        if value is not None:
            table.add_row(name, f"{value:.4f}")
    table.add_row("records/s", f"{len(gold) / elapsed:,.0f}")
    Console().print(table)


@guards_app.command("train")
def train(
    tasks: Annotated[list[str] | None, typer.Argument(help="Tasks to train (default: all).")] = None,
    data_dir: Annotated[Path, typer.Option(help="The shared/eval folder.")] = DEFAULT_DATA,
    out: Annotated[Path, typer.Option(help="Where the model files go.")] = MODELS_DIR,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 42,
) -> None:
    """Train the guards' models from ``<data-dir>/<task>/train.jsonl`` and write them into the package."""
    chosen = tasks or list(TASKS)
    for task in chosen:
        _check_task(task)
    out.mkdir(parents=True, exist_ok=True)
    for task in chosen:
        started = time.perf_counter()
        summary = task_module(task).train(data_dir, out, seed)
        _console().print(f"{task}: {summary} ({time.perf_counter() - started:.1f} s)", highlight=False)
