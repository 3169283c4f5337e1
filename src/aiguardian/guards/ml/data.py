"""Reading the labelled sets of ``shared/eval``: only ``text`` and ``label`` ever reach a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt


def read_labelled(path: Path) -> tuple[list[str], npt.NDArray[np.int64]]:
    """``(texts, labels)`` of a JSONL file of ``{"text", "label", ...}`` records. Other fields (``source``,
    ``category``) are dropped here on purpose: they often give the label away."""
    texts: list[str] = []
    labels: list[int] = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                texts.append(str(record["text"]))
                labels.append(int(record["label"]))
    return texts, np.asarray(labels, dtype=np.int64)


def train_file(data_dir: Path, task: str) -> Path:
    path = data_dir / task / "train.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no training set at {path}")
    return path
