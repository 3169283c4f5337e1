"""Prompt injection and jailbreaks: typed by the user, or planted in a document or tool output.

Two linear models over the shared hashed n-grams (:mod:`aiguardian.guards.ml`) and hand-written signals:

- the *text* model reads the whole text (the union of its segments' n-grams) with signals for override
  phrases, jailbreak and role-play markers, prompt extraction, forced answers, fake delimiters and the shape
  of a document;
- the *segment* model reads each line (or sentence of a long line) alone, so one instruction planted in a
  long table, e-mail or code answer is not drowned by the rest of it.

A small logistic combiner (fitted on out-of-fold margins) joins the text margin and, for a text of more than
one segment, the highest segment margin into the score. A one-segment text is judged by the text model alone:
a lone request such as "Summarise this in three bullet points" is an attack only when it hides inside
someone else's document. The finding points at the segment that scored highest.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict
from aiguardian.guards.ml import LinearModel, read_labelled, segments, sigmoid, train_file
from aiguardian.guards.ml.features import HashingFeaturizer, SparseRows, normalise
from aiguardian.guards.prefixed import PrefixedPattern
from aiguardian.guards.tasks import MODELS_DIR, Scorer

TASK = "injection"
REASON = "TRUST_PROMPT_INJECTION"
TEXT_FILE = "injection.text.aigml"
SEGMENT_FILE = "injection.segment.aigml"
FIT: dict[str, Any] = {"c_grid": (1.0, 4.0, 16.0), "folds": 4}
MAX_FPR = 0.015  # thresholds are chosen for at most this false-positive rate in cross-validation

_F = re.IGNORECASE


def _signal(
    name: str, anchors: str, pattern: str, literals: tuple[str, ...] = (), flags: int = _F
) -> _Signal:
    compiled = re.compile(pattern, flags)
    return _Signal(name, frozenset(anchors.split()), literals, compiled, PrefixedPattern(compiled))


@dataclass(frozen=True)
class _Signal:
    """A counted pattern. It runs only when one of the ``anchors`` words (or ``literals`` substrings) occurs in
    the lower-cased text: every match contains one, most texts contain none, and a set lookup is far cheaper
    than a pattern. Where it runs, it is tried only where a match can begin (``prefixed``)."""

    name: str
    anchors: frozenset[str]
    literals: tuple[str, ...]
    pattern: re.Pattern[str]
    prefixed: PrefixedPattern


_SIGNALS: tuple[_Signal, ...] = (
    _signal(
        "override",
        "ignore disregard forget skip bypass override overlook neglect abandon drop",
        r"\b(ignore|disregard|forget|skip|bypass|override|overlook|neglect|abandon|drop)\b[^.\n]{0,40}?"
        r"\b(previous|prior|above|earlier|preceding|former|original|initial|system|all|any|every|your|those|these)"
        r"\b[^.\n]{0,30}?\b(instructions?|prompts?|rules|directions?|directives?|guidelines|commands?|"
        r"context|programming|constraints|restrictions|policies|messages?|orders|training|text)\b",
    ),
    _signal(
        "new_instructions",
        "instruction instructions task rules directive directives prompt orders",
        r"\b(new|updated|real|actual|true|secret|hidden|revised|following|additional)\s+"
        r"(instructions?|task|rules|directives?|system prompt|orders)\s*(are|is|:|follow)",
    ),
    _signal(
        "jailbreak",
        "jailbreak jailbreaks jailbreaking jailbroken developer dev anything dan d antidan anti restrictions "
        "limitations filters rules guidelines censorship boundaries limits unfiltered uncensored amoral "
        "unrestricted moral ethical warnings policy policies safeguards character refuse decline comply answer "
        "mode evil bound",
        r"\b(jailbr(ea|o)k\w*|developer mode|dev mode|do anything now|d\.?a\.?n\.?\b|anti-?dan|"
        r"no (moral|ethical)? ?(restrictions|limitations|filters|rules|guidelines|censorship|boundaries|limits)|"
        r"unfiltered|uncensored|amoral|unrestricted|without (any )?(moral|ethical|restrictions|limitations|"
        r"filters|censorship|warnings)|(bypass|break|violate|ignore)\w* (all |any |the |your )?"
        r"(openai |content |safety )?(polic(y|ies)|guidelines|filters|safeguards)|stay in character|"
        r"never (refuse|decline)|(can ?not|can't|won't|will not) (refuse|decline)|always (comply|answer)|"
        r"break character|opposite mode|evil (ai|assistant|bot|confidant)|not bound by)",
    ),
    _signal(
        "roleplay",
        "now going will act pretend roleplay role simulate hypothetical fictional",
        r"\b(from now on|you are (now|going to)|you will (now )?(act|be|pretend|respond)|act as (if|an?)|"
        r"pretend (to be|you are|that you)|role-?play as|simulate|hypothetical (ai|model|character)|"
        r"fictional (ai|character|world))",
    ),
    _signal(
        "extraction",
        "prompt instructions rules guidelines initial original previous secret password access pre preprompt "
        "above prior preceding before",
        r"\b(reveal|repeat|print|show|output|display|tell me|give me|leak|spell|write out|disclose|list|"
        r"what (is|are|was|were))\b[^.\n]{0,40}?\b(system prompt|(your|the) (instructions|prompt|rules|"
        r"guidelines|initial|original|previous|secret|password|access code|pre-?prompt)|"
        r"(above|previous|prior|initial|preceding) (instructions|text|prompt|message)|everything (above|before))",
    ),
    _signal(
        "forced_output",
        "say respond reply answer output print write begin start end prefix",
        r"\b(say|respond with|reply with|answer with|output|print|write|(begin|start|end|prefix) your "
        r"(response|reply|answer|output)( with)?)\s*(only |just |exactly |simply )?[\"'\u201c\u2018]",
    ),
    _signal(
        "delimiter",
        "end start beginning system assistant admin",
        r"(%{3,}|#{3,}|={4,}|-{5,}|\*{3,}|\[/?(system|inst|end|user|assistant)\]|</?(system|user|assistant|"
        r"instructions?|admin)>|\b(end|start|beginning) of (the )?(user |system )?(input|prompt|instructions|"
        r"conversation|document|text)\b|^\s*(system|assistant|admin)\s*:)",
        (
            "%%%",
            "###",
            "====",
            "-----",
            "***",
            "[/",
            "[s",
            "[i",
            "[e",
            "[u",
            "[a",
            "</",
            "<s",
            "<u",
            "<a",
            "<i",
        ),
        _F | re.MULTILINE,
    ),
    _signal(
        "addresses_assistant",
        "your answer respond reply answering responding replying ai assistant model chatbot",
        r"\b(in|to|for|within|throughout|at the (start|end|beginning) of) your (answer|response|reply|output|"
        r"summary|message)\b|\byour (answer|response|reply|output) (should|must|needs to|has to|will)\b|"
        r"\b(when|before|after|while) (you )?(answer|respond|reply)(ing)?\b|\b(the|this) (ai|assistant|model|"
        r"language model|chatbot)\b",
    ),
    _signal(
        "exfiltration",
        "requests urllib curl wget fetch socket subprocess os send post upload forward transmit exfiltrate",
        r"(requests\.(post|get)\(|urllib|curl |wget |\bfetch\(|socket\.|subprocess|os\.system|"
        r"\b(send|post|upload|forward|transmit|exfiltrate)\b[^.\n]{0,40}?\b(to|at)\s+(https?://|[\w.+-]+@[\w-]+\.))",
    ),
)
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
_HEADER = re.compile(
    r"^(subject|from|to|date|email_from|received date|content)\s*:", re.IGNORECASE | re.MULTILINE
)
_CODE = re.compile(r"(```|^\s*(def |class |import |from \S+ import|traceback|File \"))", re.MULTILINE)
_HEADER_AT, _CODE_AT = PrefixedPattern(_HEADER), PrefixedPattern(_CODE)

_WORDS = re.compile(r"[a-z']+")
SIGNAL_NAMES: tuple[str, ...] = (
    *(signal.name for signal in _SIGNALS),
    "document",
    "table_row",
    "long",
    "lines",
)
SCAN_CHARS = 20000


def signals(text: str, spans: Sequence[tuple[int, int]] = ()) -> tuple[list[float], npt.NDArray[np.float64]]:
    """The hand-written signals of a text, each in [0, 1], and of each of its ``spans``.

    The patterns run once over the text (its first ``SCAN_CHARS`` characters); a match counts for the segment
    it starts in. A segment shares its document's ``document`` signal: an instruction inside an e-mail, a table
    or a code answer is what this guard is looking for.
    """
    head = text[:SCAN_CHARS]
    lower = head.lower()
    words = set(_WORDS.findall(lower))
    starts = [start for start, _ in spans]
    n = len(SIGNAL_NAMES)
    k = len(_SIGNALS)
    # Plain lists, one array at the end: a text has a handful of segments, and numpy's per-call cost on such
    # small arrays was a good part of this function's time.
    whole = [0.0] * n
    per = [[0.0] * n for _ in spans]
    for column, signal in enumerate(_SIGNALS):
        if signal.anchors.isdisjoint(words) and not any(lit in lower for lit in signal.literals):
            continue
        for match in signal.prefixed.finditer(head, lower):
            whole[column] += 1
            if spans:
                per[max(bisect.bisect_right(starts, match.start()) - 1, 0)][column] += 1
        whole[column] = min(whole[column], 3) / 3  # at most 3 matches count
        for row in per:
            row[column] = min(row[column], 3) / 3
    rows = _TABLE_ROW.findall(head) if "|" in head else []
    document = len(rows) >= 3 or bool(_HEADER_AT.search(head, lower)) or bool(_CODE_AT.search(head, lower))
    whole[k] = 1.0 if document else 0.0
    whole[k + 1] = 1.0 if rows else 0.0
    for row, (start, end) in zip(per, spans, strict=True):
        piece = text[start:end].strip()
        row[k] = whole[k]
        row[k + 1] = 1.0 if len(piece) > 1 and piece[0] == "|" and piece[-1] == "|" else 0.0
        row[k + 2] = min((end - start) / 4000, 1.0)
    whole[k + 2] = min(len(text) / 4000, 1.0)
    whole[k + 3] = min(text.count("\n") / 40, 1.0)
    return whole, np.array(per, dtype=np.float64).reshape(len(spans), n)


@dataclass
class InjectionModel:
    """The shipped models: text and segment, and the combiner's three numbers."""

    text: LinearModel
    segment: LinearModel

    @property
    def combiner(self) -> tuple[float, float, float, float]:
        a, b, c, d = self.text.meta["combiner"]
        return float(a), float(b), float(c), float(d)

    @property
    def threshold(self) -> float:
        return float(self.text.meta["combined_threshold"])

    def analyse(self, text: str) -> tuple[float, int, tuple[int, int] | None]:
        """``(score, index of the top segment, its span)`` of one text."""
        spans = segments(text) or [(0, len(text))]
        per_segment, whole = self.text.featurizer.transform_segments([text[s:e] for s, e in spans])
        return self._judge(text, spans, per_segment, whole)

    def analyse_many(self, texts: Sequence[str]) -> list[tuple[float, int, tuple[int, int] | None]]:
        """``[analyse(text) for text in texts]``, the n-grams of all of them hashed in one pass."""
        cut = [segments(text) or [(0, len(text))] for text in texts]
        rows = self.text.featurizer.transform_documents(
            [[text[s:e] for s, e in spans] for text, spans in zip(texts, cut, strict=True)]
        )
        return [
            self._judge(text, spans, per_segment, whole)
            for text, spans, (per_segment, whole) in zip(texts, cut, rows, strict=True)
        ]

    def _judge(
        self, text: str, spans: list[tuple[int, int]], per_segment: SparseRows, whole: SparseRows
    ) -> tuple[float, int, tuple[int, int] | None]:
        text_signals, seg_signals = signals(text, spans)
        margin = self.text.margins(whole, [text_signals])[0]
        a, b, c, d = self.combiner
        top = 0
        if len(spans) > 1:
            seg_margins = self.segment.margins(per_segment, seg_signals)
            top = int(np.argmax(seg_margins))
            margin = a * margin + b * seg_margins[top] + c + d
        else:
            margin = a * margin + d
        return float(sigmoid(np.array([margin]))[0]), top, spans[top]


_lock = threading.Lock()
_cache: dict[Path, InjectionModel] = {}


def load(models_dir: Path = MODELS_DIR) -> InjectionModel:
    """The models in ``models_dir``, loaded once per process."""
    with _lock:
        model = _cache.get(models_dir)
        if model is None:
            model = InjectionModel(
                LinearModel.load(models_dir / TEXT_FILE), LinearModel.load(models_dir / SEGMENT_FILE)
            )
            for part in (model.text, model.segment):
                if part.signal_names != SIGNAL_NAMES:
                    raise ValueError("the injection model was trained with other signals; retrain it")
            _cache[models_dir] = model
        return model


def scorer(models_dir: Path = MODELS_DIR) -> Scorer:
    model = load(models_dir)

    def score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        found = model.analyse_many([str(record.get("text", "")) for record in records])
        threshold = model.threshold
        return [{"score": round(value, 6), "label": int(value >= threshold)} for value, _, _ in found]

    return score


# --- training -------------------------------------------------------------------------------------------


@dataclass
class _Corpus:
    """The training texts cut into segments, with everything both models need."""

    whole: SparseRows
    whole_signals: npt.NDArray[np.float64]
    segments: SparseRows
    segment_signals: npt.NDArray[np.float64]
    segment_labels: npt.NDArray[np.int64]
    segment_docs: npt.NDArray[np.int64]


def _corpus(featurizer: HashingFeaturizer, texts: Sequence[str], labels: npt.NDArray[np.int64]) -> _Corpus:
    """Featurize the training texts as the guard does, and label their segments.

    Every segment of a benign text is benign. A segment of an attack is an attack unless the same line also
    occurs in some benign text: for a document with a planted instruction only the planted lines stay
    positive, and its ordinary rows and sentences are not taught as attacks.
    """
    benign: set[str] = set()
    cut: list[tuple[list[tuple[int, int]], list[str]]] = []
    for text, label in zip(texts, labels, strict=True):
        spans = segments(text) or [(0, len(text))]
        pieces = [text[s:e] for s, e in spans]
        cut.append((spans, pieces))
        if not label:
            benign.update(normalise(p) for p in pieces)
    whole_rows, seg_rows, whole_signals, seg_signals = [], [], [], []
    seg_labels: list[int] = []
    seg_docs: list[int] = []
    for doc, (text, label, (spans, pieces)) in enumerate(zip(texts, labels, cut, strict=True)):
        per_segment, whole = featurizer.transform_segments(pieces)
        whole_rows.append(whole)
        seg_rows.append(per_segment)
        text_signals, per_signals = signals(text, spans)
        whole_signals.append(text_signals)
        seg_signals.append(per_signals)
        seg_labels.extend(int(label and normalise(p) not in benign) for p in pieces)
        seg_docs.extend([doc] * len(pieces))
    return _Corpus(
        SparseRows.stack(whole_rows),
        np.asarray(whole_signals, dtype=np.float64),
        SparseRows.stack(seg_rows),
        np.concatenate(seg_signals),
        np.asarray(seg_labels, dtype=np.int64),
        np.asarray(seg_docs, dtype=np.int64),
    )


def train(data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from aiguardian.guards.ml import training

    texts, labels = read_labelled(train_file(data_dir, TASK))
    featurizer = HashingFeaturizer(char_ngrams=(3, 5), word_ngrams=(1, 2), bits=20)
    corpus = _corpus(featurizer, texts, labels)
    options: dict[str, Any] = {"seed": seed, "signal_names": SIGNAL_NAMES, "max_fpr": MAX_FPR, **FIT}
    text_fit = training.fit(featurizer, corpus.whole, labels, signals=corpus.whole_signals, **options)
    seg_fit = training.fit(
        featurizer,
        corpus.segments,
        corpus.segment_labels,
        signals=corpus.segment_signals,
        groups=corpus.segment_docs.tolist(),
        **options,
    )
    # The combiner learns from margins of models that did not see the text (out of fold, documents kept whole).
    text_oof, seg_oof = text_fit.out_of_fold, seg_fit.out_of_fold
    top_seg = np.full(len(texts), -np.inf)
    np.maximum.at(top_seg, corpus.segment_docs, seg_oof)
    several = (np.bincount(corpus.segment_docs, minlength=len(texts)) > 1).astype(np.float64)
    stacked = np.column_stack([text_oof, top_seg * several, several])
    combiner = LogisticRegression(C=1.0).fit(stacked, labels)
    combined = combiner.predict_proba(stacked)[:, 1]
    threshold, f1, fpr = training.best_threshold(labels, combined, max_fpr=MAX_FPR)
    a, b, c = (float(x) for x in combiner.coef_.ravel())
    text_model, seg_model = text_fit.model, seg_fit.model
    text_model.meta.update(
        combiner=[round(a, 6), round(b, 6), round(c, 6), round(float(combiner.intercept_[0]), 6)],
        combined_threshold=threshold,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    text_model.save(out_dir / TEXT_FILE)
    seg_model.save(out_dir / SEGMENT_FILE)
    _cache.pop(out_dir, None)
    return {
        "text": text_fit.summary,
        "segment": seg_fit.summary,
        "combined": {"cv_f1": round(f1, 4), "cv_fpr": round(fpr, 4), "threshold": threshold},
    }


# --- the guard ------------------------------------------------------------------------------------------


class InjectionGuard:
    """Prompt injection and jailbreaks in the user's text, and in documents and tool output among the messages.

    Options: ``threshold`` (score in [0, 1]; default: the model's own, chosen for a false-positive rate of at
    most 2 % in cross-validation), ``action`` (``block`` or ``warn``), ``scan_tools`` (also check ``tool`` and
    ``function`` messages, default true).
    """

    name: ClassVar[str] = "injection"
    cpu_bound: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(
        self,
        threshold: float | None = None,
        action: Literal["block", "warn"] = "block",
        scan_tools: bool = True,
        models_dir: str | None = None,
    ) -> None:
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if action not in ("block", "warn"):
            raise ValueError("action must be 'block' or 'warn'")
        self.model = load(Path(models_dir) if models_dir else MODELS_DIR)
        self.threshold = self.model.threshold if threshold is None else threshold
        self.action = Action(action)
        self.scan_tools = scan_tools

    def check(self, context: GuardContext) -> Verdict:
        verdict = Verdict(guard=self.name)
        score, _, span = self.model.analyse(context.text)
        if score >= self.threshold:
            start, end = span if span else (None, None)
            verdict.findings.append(Finding("prompt_injection", start, end, score, "text"))
        best = score
        if self.scan_tools:
            for index, message in enumerate(context.messages):
                if message.get("role") not in ("tool", "function"):
                    continue
                content = _content_text(message.get("content"))
                if not content or content in context.text:
                    continue
                value = self.model.analyse(content)[0]
                best = max(best, value)
                if value >= self.threshold:
                    detail = f"message {index} ({message.get('role')})"
                    verdict.findings.append(Finding("prompt_injection", None, None, value, detail))
        verdict.score = best
        if verdict.findings:
            verdict.action = self.action
            verdict.reason_codes = [REASON]
        return verdict


def _content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""
