"""DriftGuard: has the conversation left its purpose?

The purpose is the system prompt, the first user turns and the policy's ``allowed_topics``; the turn under
check is the last user message. Both become vectors in a small latent semantic space (LSA: a truncated SVD of
a TF-IDF matrix) learned offline from the train texts of every ``shared/eval`` task, used as an unlabelled
corpus, so related words without a word in common ("roast", "oven", "recipe") still land near each other.
Drift is one minus the best cosine similarity of the turn to the purpose (or to one allowed topic), taken
over the latent and the plain TF-IDF spaces. Inference is numpy over two shipped files: ``drift.json`` (the
vocabulary and its IDF) and ``drift.npy`` (one latent vector per word).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.tasks import MODELS_DIR

REASON = "CONTEXT_DRIFT"
VOCAB_FILE = "drift.json"
VECTORS_FILE = "drift.npy"
FORMAT_VERSION = 1
DIMENSIONS = 96

_WORD = re.compile(r"[a-z]{2,}")
_STOP = frozenset(
    [
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "more",
        "most",
        "my",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "please",
        "thanks",
        "thank",
        "hi",
        "hello",
        "ok",
        "okay",
        "yes",
        "like",
        "want",
        "need",
        "know",
        "tell",
        "help",
        "could",
        "would",
        "get",
        "give",
        "make",
        "let",
        "us",
        "one",
        "two",
    ]
)

Floats = npt.NDArray[np.float32]


_SUFFIXES = (
    "ations",
    "ation",
    "ions",
    "ion",
    "ings",
    "ing",
    "ness",
    "ment",
    "ies",
    "ied",
    "ers",
    "er",
    "ed",
    "ly",
    "es",
    "s",
)


def _stem(word: str) -> str:
    """Suffixes off (roasted, roasting, roasts: roast), then at most seven letters."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)]
            if suffix in ("ies", "ied"):
                word += "y"
            break
    if len(word) >= 4 and word[-1] == "e":
        word = word[:-1]  # bake, baking: bak
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
        word = word[:-1]  # chopp(ing), bigg(er)
    return word[:7]


def terms(text: str) -> list[str]:
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


class DriftModel:
    def __init__(self, spec: dict[str, Any], vectors: Floats) -> None:
        if spec.get("version") != FORMAT_VERSION:
            raise ValueError(f"drift model format {spec.get('version')!r}, expected {FORMAT_VERSION}")
        vocab: list[str] = spec["vocabulary"]
        self.index = {w: i for i, w in enumerate(vocab)}
        self.idf = np.asarray(spec["idf"], dtype=np.float32)
        self.unknown_idf = float(spec["unknown_idf"])
        self.vectors = vectors.astype(np.float32)  # (vocabulary, DIMENSIONS), already IDF-weighted
        norms = np.linalg.norm(self.vectors, axis=1, keepdims=True)
        self.unit: Floats = self.vectors / np.maximum(norms, 1e-9)
        self.threshold = float(spec["threshold"])
        calibration = spec["calibration"]
        self.intercept = float(calibration["intercept"])
        self.coef = np.asarray(calibration["coef"], dtype=np.float64)  # semantic, lexical, coverage

    @classmethod
    def load(cls, directory: Path) -> DriftModel:
        spec = json.loads((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        return cls(spec, np.load(directory / VECTORS_FILE, allow_pickle=False))

    def embed(self, text: str) -> tuple[Floats, dict[str, float]]:
        """The text's unit latent vector and its unit TF-IDF weights by term (empty when nothing is known)."""
        counts = Counter(terms(text))
        latent = np.zeros(self.vectors.shape[1], dtype=np.float32)
        weights: dict[str, float] = {}
        for term, n in counts.items():
            tf = 1.0 + math.log(n)
            i = self.index.get(term)
            if i is not None:
                latent += tf * self.vectors[i]
                weights[term] = tf * float(self.idf[i])
            else:
                weights[term] = tf * self.unknown_idf
        norm = float(np.linalg.norm(latent))
        if norm > 0:
            latent /= norm
        length = math.sqrt(sum(w * w for w in weights.values())) or 1.0
        return latent, {t: w / length for t, w in weights.items()}

    def known_terms(self, text: str) -> int:
        return sum(1 for t in set(terms(text)) if t in self.index)

    def signals(self, turn: str, purpose: str) -> list[float]:
        """Latent cosine, TF-IDF cosine and soft coverage (each turn word's nearest purpose word, by IDF)."""
        latent, lexical = self.embed(turn)
        p_latent, p_lexical = self.embed(purpose)
        semantic = float(latent @ p_latent)
        shared = sum(w * p_lexical[t] for t, w in lexical.items() if t in p_lexical)
        return [semantic, shared, self._coverage(list(lexical), list(p_lexical))]

    def drift(self, turn: str, purposes: Sequence[str]) -> float:
        """P(the turn is off every purpose): a logistic calibration of the signals, fitted on same-document
        against other-document text pairs; the purpose that fits the turn best counts."""
        best = 1.0
        for purpose in purposes:
            z = self.intercept + float(self.coef @ np.asarray(self.signals(turn, purpose)))
            best = min(best, 1.0 / (1.0 + math.exp(-z)))
        return best

    def _coverage(self, turn_terms: list[str], purpose_terms: list[str]) -> float:
        known = [self.index[p] for p in purpose_terms if p in self.index]
        purpose_set = set(purpose_terms)
        total = covered = 0.0
        for term in turn_terms:
            i = self.index.get(term)
            weight = float(self.idf[i]) if i is not None else self.unknown_idf
            total += weight
            if term in purpose_set:
                covered += weight
            elif i is not None and known:
                covered += weight * max(0.0, float((self.unit[known] @ self.unit[i]).max()))
        return covered / total if total else 0.0


_lock = threading.Lock()
_models: dict[Path, DriftModel] = {}


def load_model(directory: Path | None = None) -> DriftModel:
    """The model in ``directory`` (default: the shipped one), loaded once per process."""
    directory = directory or MODELS_DIR
    model = _models.get(directory)
    if model is None:
        with _lock:
            model = _models.get(directory)
            if model is None:
                model = _models[directory] = DriftModel.load(directory)
    return model


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text"))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and p.get("text")
        )
    return ""


class DriftGuard:
    """Warns (by default) when the last user turn drifts from the conversation's purpose: ``CONTEXT_DRIFT``.

    The turn is the last ``user`` message of ``context.messages`` (``context.text`` when there are none), so a
    caller that checks each turn passes the conversation up to and including it.

    Options: ``threshold`` on the drift score (default: the model's), ``action`` (default ``warn``),
    ``allowed_topics`` (short descriptions of what the conversation may be about; each counts as a purpose of
    its own), ``purpose_turns`` (how many first user turns join the system prompt as the purpose, default 2),
    ``min_terms`` (a turn with fewer known content words, "thanks!", is not judged; default 2) and
    ``model_dir`` (another trained model).
    """

    name: ClassVar[str] = "drift"
    cpu_bound: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(
        self,
        threshold: float | None = None,
        action: str = "warn",
        allowed_topics: list[str] | None = None,
        purpose_turns: int = 2,
        min_terms: int = 2,
        model_dir: str | None = None,
    ) -> None:
        self._threshold = threshold
        self.action = Action(action)
        self.allowed_topics = [t for t in allowed_topics or () if t.strip()]
        self.purpose_turns = purpose_turns
        self.min_terms = min_terms
        # Loaded when a policy builds the guard (the loader does that off the event loop), once per process.
        self.model = load_model(Path(model_dir) if model_dir else None)

    @property
    def threshold(self) -> float:
        return self._threshold if self._threshold is not None else self.model.threshold

    def purpose(self, context: GuardContext) -> list[str]:
        """The texts the last user turn is compared with: the system prompt and first user turns (as one text)
        and each allowed topic."""
        system = [
            _text(m.get("content")) for m in context.messages if m.get("role") in ("system", "developer")
        ]
        if not system and context.system_prompt:
            system = [context.system_prompt]
        users = [_text(m.get("content")) for m in context.messages if m.get("role") == "user"]
        first = users[: min(self.purpose_turns, max(len(users) - 1, 0))]
        main = "\n".join(t for t in [*system, *first] if t.strip())
        return [t for t in [main, *self.allowed_topics] if t]

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        users = [m for m in context.messages if m.get("role") == "user"]
        turn = _text(users[-1].get("content")) if users else context.text
        purposes = self.purpose(context)
        if purposes and turn.strip():
            model = self.model
            if model.known_terms(turn) >= self.min_terms:
                verdict.score = model.drift(turn, purposes)
                if verdict.score >= self.threshold:
                    verdict.action = self.action
                    verdict.reason_codes.append(REASON)
                    verdict.findings.append(
                        Finding("drift", score=verdict.score, detail="the last user turn is off the purpose")
                    )
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict


# ---------------------------------------------------------------- training (scikit-learn, not at run time)


def corpus(data_dir: Path) -> list[str]:
    """Every distinct train text of every task; long documents in chunks of about 120 words."""
    seen: set[str] = set()
    docs: list[str] = []
    for path in sorted(data_dir.glob("*/train.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                for key in ("text", "context", "response"):
                    value = record.get(key)
                    if not isinstance(value, str) or not value.strip() or value in seen:
                        continue
                    seen.add(value)
                    words = value.split()
                    docs.extend(" ".join(words[i : i + 120]) for i in range(0, len(words), 120))
    return docs


def train(
    data_dir: Path, out_dir: Path, seed: int, min_df: int = 3, max_vocabulary: int = 20_000
) -> dict[str, Any]:
    """Learn the vocabulary, IDF and latent word vectors; write ``drift.json`` and ``drift.npy``."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = corpus(data_dir)
    vectorizer = TfidfVectorizer(
        analyzer=terms, min_df=min_df, max_features=max_vocabulary, sublinear_tf=True, dtype=np.float64
    )
    x = vectorizer.fit_transform(docs)
    dims = min(DIMENSIONS, x.shape[1] - 1, x.shape[0] - 1)
    svd = TruncatedSVD(n_components=dims, algorithm="randomized", n_iter=7, random_state=seed).fit(x)
    vocab = [str(w) for w in vectorizer.get_feature_names_out()]
    idf = vectorizer.idf_
    vectors = (svd.components_.T * idf[:, None]).astype(np.float16)
    spec: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "vocabulary": vocab,
        "idf": [float(f"{v:.5g}") for v in idf],
        "unknown_idf": float(f"{float(idf.max()):.5g}"),
        "threshold": 0.5,
        "calibration": {"intercept": 0.0, "coef": [0.0, 0.0, 0.0]},
    }
    spec["calibration"], pairs = _calibrate(DriftModel(spec, vectors), data_dir, seed)
    spec["training"] = {
        "documents": len(docs),
        "dimensions": dims,
        "seed": seed,
        "min_df": min_df,
        "pairs": pairs,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / VOCAB_FILE).write_text(
        json.dumps(spec, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    np.save(out_dir / VECTORS_FILE, vectors, allow_pickle=False)
    _models.pop(out_dir, None)
    return {"documents": len(docs), "vocabulary": len(vocab), "dimensions": dims}


def _calibrate(model: DriftModel, data_dir: Path, seed: int) -> tuple[dict[str, Any], int]:
    """Fit P(off-topic) on pairs: the first 60 words of a long text as the purpose, and as the turn 20 words
    from further on in the same text (on topic) or from another text (off topic)."""
    import random

    from sklearn.linear_model import LogisticRegression

    texts = sorted(
        {" ".join(words) for words in (d.split() for d in _long_texts(data_dir)) if len(words) >= 150}
    )
    rng = random.Random(seed)
    rng.shuffle(texts)
    texts = texts[:1500]
    x, y = [], []
    for i, text in enumerate(texts):
        words = text.split()
        other = texts[(i + 1 + rng.randrange(len(texts) - 1)) % len(texts)].split()
        purpose = " ".join(words[:60])
        start = rng.randrange(130, len(words) - 19)
        for turn, label in ((words[start : start + 20], 0), (other[start % (len(other) - 20) :][:20], 1)):
            x.append(model.signals(" ".join(turn), purpose))
            y.append(label)
    fit = LogisticRegression(C=1.0, max_iter=1000).fit(np.asarray(x), np.asarray(y))
    calibration = {
        "intercept": float(f"{float(fit.intercept_[0]):.6g}"),
        "coef": [float(f"{float(c):.6g}") for c in fit.coef_[0]],
    }
    return calibration, len(y)


def _long_texts(data_dir: Path) -> list[str]:
    out: list[str] = []
    for path in sorted(data_dir.glob("*/train.jsonl")):
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    out.extend(record[k] for k in ("text", "context") if isinstance(record.get(k), str))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aiguardian.guards.context.drift``: train the drift model (it has no labelled eval task)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument(
        "--data-dir", type=Path, default=Path("../shared/eval"), help="the shared/eval folder"
    )
    parser.add_argument("--out", type=Path, default=MODELS_DIR, help="where drift.json and drift.npy go")
    parser.add_argument("--seed", type=int, default=42, help="the same seed gives the same files")
    args = parser.parse_args(argv)
    print(train(args.data_dir, args.out, args.seed))


if __name__ == "__main__":
    main()
