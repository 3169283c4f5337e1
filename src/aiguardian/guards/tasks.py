"""The scored tasks of ``aiguardian guards train|score|eval`` and the module that owns each.

Every task module offers two functions:

- ``scorer() -> Callable[[list[dict]], list[dict]]``: load the shipped model once and return a function that
  maps input records (``{"id", "text"}``, or ``{"id", "context", "response"}`` for grounding) to output records
  in the format of ``shared/eval/evaluate.py``: ``{"score", "label"}``, or ``{"spans"}`` for pii.
- ``train(data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]``: train from
  ``data_dir/<task>/train.jsonl`` and write the model files into ``out_dir``; return a short summary.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

TASKS: dict[str, str] = {
    "injection": "aiguardian.guards.trust.injection",
    "toxicity": "aiguardian.guards.bias.toxicity",
    "bias": "aiguardian.guards.bias.stereotype",
    "pii": "aiguardian.guards.pii.detector",
    "secrets": "aiguardian.guards.secrets.detector",
    "grounding": "aiguardian.guards.trust.grounding",
}

SPAN_TASKS = frozenset({"pii"})
PAIR_TASKS = frozenset({"grounding"})

Scorer = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]

MODELS_DIR = Path(__file__).parent / "models"


class TaskModule(Protocol):
    def scorer(self) -> Scorer: ...
    def train(self, data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]: ...


def task_module(task: str) -> TaskModule:
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    return cast(TaskModule, importlib.import_module(TASKS[task]))
