"""Reading the labelled sets of ``shared/eval``: only ``text`` and ``label`` ever reach a model."""

from __future__ import annotations

import json
import re
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


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")


def plain_sentences(data_dir: Path, limit: int, seed: int) -> list[str]:
    """Ordinary sentences for a classifier that must learn what *not* to flag: sentences of the consistent
    summaries in ``grounding/train.jsonl`` and benign prompts of ``injection/train.jsonl`` (label 0, short,
    not tables or e-mails), ``limit`` of them drawn with ``seed``. Only training files are read."""
    pool: list[str] = []
    grounding = data_dir / "grounding" / "train.jsonl"
    if grounding.is_file():
        with grounding.open(encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                if int(record.get("label", 0)) == 1:
                    pool.extend(
                        s.strip() for s in _SENTENCE.split(str(record["response"])) if 30 <= len(s) <= 300
                    )
    injection = data_dir / "injection" / "train.jsonl"
    if injection.is_file():
        texts, labels = read_labelled(injection)
        pool.extend(
            t
            for t, y in zip(texts, labels, strict=True)
            if not y and 12 <= len(t) <= 400 and "|" not in t and ":" not in t[:20] and " " in t.strip()
        )
    unique = sorted(set(pool))
    rng = np.random.default_rng(seed)
    if not unique:
        return []
    chosen = rng.choice(len(unique), size=min(limit, len(unique)), replace=False)
    return [unique[int(i)] for i in np.sort(chosen)]
