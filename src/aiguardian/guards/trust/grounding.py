"""Grounding: is an answer supported by the documents the request supplied?

The score comes from features of how well each part of the answer is supported by the sources: content words,
numbers and names that the sources never mention, n-grams the sources do not contain, pairs of answer words
that never stand near each other in the sources (a swapped name or relation), negations and opposites
(``increase``/``decrease``, ``necessary``/``unnecessary``) that the aligned source sentence does not carry, how
well each answer sentence aligns with its best source window, and how rare the new words are. A logistic
regression over the hashed words that the sources do not contain adds what kinds of new words tend to be
edits rather than paraphrases. Gradient-boosted trees (trained with scikit-learn, exported as arrays) combine
them; inference is the standard library and numpy.

Trained on ``shared/eval/grounding/train.jsonl`` (SummEdits) by ``aiguardian guards train grounding``; the
word frequencies come from the train texts of every task, used as an unlabelled corpus.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from aiguardian.guards.base import Action, Direction, Finding, GuardContext, Verdict
from aiguardian.guards.tasks import MODELS_DIR, Scorer

MODEL_FILE = "grounding.json"
REASON = "TRUST_UNGROUNDED"
HASH_BUCKETS = 1 << 14
FORMAT_VERSION = 1

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP = _wordset(
    """a an the and or but if then than so as of at by for from in into on onto to with within about above
    after again against all am any are aren't be because been before being below between both can could did do
    does doing down during each few further had has have having he her here hers herself him himself his how i
    it its itself just me more most my myself nor now off once only other our ours ourselves out over own same
    she should some such that their theirs them themselves there these they this those through too under until
    up very was we were what when where which while who whom why will would you your yours yourself also
    is it's i'm we're they're you're he's she's that's there's let's said says say one"""
)
NEGATIONS = _wordset(
    """not no never none nobody nothing neither nor without cannot can't don't doesn't didn't isn't aren't
    wasn't weren't won't wouldn't shouldn't couldn't hasn't haven't hadn't lack lacks lacked absence absent
    unable fail fails failed refused refuse denied deny"""
)
NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fifteen": "15", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "first": "1", "second": "2", "third": "3",
    "half": "50", "dozen": "12",
}  # fmt: skip
DIRECTION_WORDS = _wordset(
    """increase increased increases increasing decrease decreased decreases decreasing rise rose risen rising
    fall fell fallen falling higher lower high low more less greater fewer larger smaller gain gained loss lost
    grew grow growth decline declined up down above below before after positive negative better worse best worst
    strong weak stronger weaker improve improved reduce reduced raise raised cut cuts"""
)
QUANTIFIERS = _wordset("only all every always entire entirely both each none some several many most majority")
_OPPOSITES = _wordset(
    """increase:decrease rise:fall high:low higher:lower more:less more:fewer gain:loss positive:negative
    before:after accept:reject agree:disagree success:failure win:lose open:close early:late first:last start:end
    begin:finish buy:sell include:exclude add:remove strong:weak good:bad better:worse best:worst large:small
    larger:smaller big:small up:down above:below maximum:minimum old:new young:old profit:loss rose:fell
    grew:shrank expand:shrink cheap:expensive cheaper:expensive easy:difficult easy:hard simple:complex fast:slow
    faster:slower long:short longer:shorter always:never all:none all:some many:few majority:minority
    same:different similar:different true:false right:wrong correct:incorrect present:absent with:without
    support:oppose allow:prevent enable:disable internal:external upper:lower north:south east:west left:right
    male:female man:woman he:she his:her husband:wife boy:girl mother:father son:daughter brother:sister yes:no
    morning:evening today:tomorrow yesterday:tomorrow week:month month:year online:offline hot:cold warm:cold
    happy:sad like:dislike love:hate arrive:leave come:go push:pull give:take send:receive import:export
    input:output supervised:unsupervised global:local public:private full:empty wet:dry rich:poor light:heavy
    light:dark top:bottom front:back inside:outside lead:lag outperform:underperform over:under
    overestimate:underestimate safe:dangerous legal:illegal possible:impossible likely:unlikely
    necessary:unnecessary able:unable approve:reject confirm:deny pass:fail won:lost raise:lower raised:lowered
    expensive:affordable minor:major junior:senior"""
)
_NEGATING_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "mis", "de")

FEATURES = (
    "content_words", "novel_fraction", "novel_words", "numbers", "novel_numbers", "names", "novel_names",
    "bigram_miss", "trigram_miss", "pair_miss_fraction", "pair_miss", "negations", "unaligned_negations",
    "source_negation_rate", "unaligned_direction_words", "unaligned_quantifiers", "min_sentence_support",
    "min_sentence_alignment", "mean_sentence_alignment", "sentences", "log_source_words", "length_ratio",
    "far_pairs", "far_pair_fraction", "novel_opposites", "known_opposites", "negated_prefixes",
    "novel_log_freq_mean", "novel_log_freq_max", "novel_log_freq_min", "common_novel_words", "rare_novel_words",
    "novel_word_logit",
)  # fmt: skip
N_DENSE = len(FEATURES) - 1  # the last one is the hashed-word logistic regression's output


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A crude, fast stem: number words as digits, numbers without separators, plurals off, six letters."""
    w = word.lower()
    if w in NUMBER_WORDS:
        return NUMBER_WORDS[w]
    if w[0].isdigit():
        return w.replace(",", "").rstrip(".")
    if w.endswith("'s"):
        w = w[:-2]
    if len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        w = w[:-1]
    return w[:6]


_NEGATION_STEMS = frozenset(stem(w) for w in NEGATIONS)
_OPPOSITE: dict[str, set[str]] = {}
for _pair in _OPPOSITES:
    _a, _b = (stem(w) for w in _pair.split(":"))
    _OPPOSITE.setdefault(_a, set()).add(_b)
    _OPPOSITE.setdefault(_b, set()).add(_a)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


def _is_negation(lower: str) -> bool:
    return lower in NEGATIONS or lower.endswith("n't")


class Document:
    """The sources, indexed once: stems per sentence, where each stem occurs, n-grams, negations."""

    __slots__ = (
        "bigrams",
        "has_negation",
        "lower",
        "negations",
        "positions",
        "sentence_stems",
        "trigrams",
        "where",
        "windows",
        "words",
    )

    def __init__(self, text: str) -> None:
        self.sentence_stems: list[set[str]] = []
        self.has_negation: list[bool] = []
        self.where: dict[str, int] = {}  # stem -> bit mask of the sentences that hold it
        self.positions: dict[str, list[int]] = {}  # stem -> token positions
        self.lower: set[str] = set()
        self.negations = 0
        stems: list[str] = []
        for a, b in sentence_spans(text):
            words = WORD.findall(text, a, b)
            if not words:
                continue
            i = len(self.sentence_stems)
            bit = 1 << i
            ss = [stem(w) for w in words]
            negated = False
            for w, s in zip(words, ss, strict=True):
                low = w.lower()
                self.lower.add(low)
                self.where[s] = self.where.get(s, 0) | bit
                self.positions.setdefault(s, []).append(len(stems))
                stems.append(s)
                if low in NEGATIONS or low.endswith("n't"):
                    self.negations += 1
                    negated = True
            self.sentence_stems.append(set(ss))
            self.has_negation.append(negated)
        self.words = len(stems)
        # stem -> the two-sentence windows (i, i + 1) that hold it, named by i
        self.windows: dict[str, tuple[int, ...]] = {}
        for s, mask in self.where.items():
            ids = {j for j in range(mask.bit_length()) if mask >> j & 1}
            self.windows[s] = tuple(sorted(ids | {j - 1 for j in ids if j > 0}))
        self.bigrams = set(itertools.pairwise(stems))
        self.trigrams = set(zip(stems, stems[1:], stems[2:], strict=False))

    def window(self, i: int, radius: int) -> set[str]:
        out: set[str] = set()
        for k in range(max(0, i - radius), min(len(self.sentence_stems), i + radius + 1)):
            out |= self.sentence_stems[k]
        return out


@lru_cache(maxsize=32)
def document(text: str) -> Document:
    """The indexed sources, kept for the next check of the same sources (a stream checks them again and
    again)."""
    return Document(text)


def _near(p: list[int], q: list[int], distance: int) -> bool:
    for x in p:
        k = bisect.bisect_left(q, x - distance)
        if k < len(q) and q[k] <= x + distance:
            return True
    return False


@dataclass(frozen=True, slots=True)
class WordFrequencies:
    counts: dict[str, int]
    total: int

    def log_freq(self, word: str) -> float:
        return math.log((self.counts.get(word, 0) + 1) / self.total)


def features(doc: Document, response: str, freq: WordFrequencies) -> tuple[list[float], set[int]]:
    """The dense features of one answer against the sources, and the hash buckets of its novel words."""
    n_sent = len(doc.sentence_stems)
    content_total = novel_total = numbers = novel_numbers = names = novel_names = 0
    bigrams = bigram_miss = trigrams = trigram_miss = pairs = pair_miss = 0
    negations = unaligned_neg = unaligned_dir = unaligned_quant = 0
    far_n = far = novel_opp = known_opp = neg_prefix = 0
    supports: list[float] = []
    alignments: list[float] = []
    novel_freqs: list[float] = []
    buckets: set[int] = set()
    for a, b in sentence_spans(response):
        words = WORD.findall(response, a, b)
        if not words:
            continue
        low = [w.lower() for w in words]
        ss = [stem(w) for w in words]
        content: list[int] = []
        for k, w in enumerate(words):
            lw, s = low[k], ss[k]
            known = s in doc.where
            if w[0].isdigit() or (lw in NUMBER_WORDS and lw not in ("one", "first", "second")):
                numbers += 1
                novel_numbers += not known
            if k > 0 and w[0].isupper():
                names += 1
                novel_names += lw not in doc.lower and not known
            if not known and w[0].islower():  # names and numbers have features of their own
                buckets.add(zlib.crc32(lw.encode()) % HASH_BUCKETS)
            if lw not in STOP and len(lw) > 1:
                content.append(k)
        novel = [k for k in content if ss[k] not in doc.where]
        content_total += len(content)
        novel_total += len(novel)
        supports.append(1 - len(novel) / len(content) if content else 1.0)
        for k in range(len(ss) - 1):
            bigrams += 1
            bigram_miss += (ss[k], ss[k + 1]) not in doc.bigrams
        for k in range(len(ss) - 2):
            trigrams += 1
            trigram_miss += (ss[k], ss[k + 1], ss[k + 2]) not in doc.trigrams
        known_stems = [ss[k] for k in content if ss[k] in doc.where]
        for j, sj in enumerate(known_stems):
            mask = doc.where[sj]
            mask |= (mask << 1) | (mask >> 1)
            for sk in known_stems[j + 1 : j + 4]:
                pairs += 1
                pair_miss += not (mask & doc.where[sk])
        # A known word none of whose neighbours stands within ten words of it in the sources.
        for j, k in enumerate(content):
            s = ss[k]
            if s not in doc.positions:
                continue
            lo, hi = max(0, j - 2), min(len(content), j + 3)
            neighbours = {ss[content[m]] for m in range(lo, hi) if m != j} & doc.positions.keys()
            neighbours.discard(s)
            if not neighbours:
                continue
            far_n += 1
            far += not any(_near(doc.positions[s], doc.positions[x], 10) for x in neighbours)
        # The best-aligned source window of this sentence.
        cset = {ss[k] for k in content}
        counts: dict[int, int] = {}
        for s in cset:
            for i in doc.windows.get(s, ()):
                counts[i] = counts.get(i, 0) + 1
        best, best_i = 0, (0 if n_sent else -1)
        if counts:  # the most overlap; the first window among equals
            best, best_i = max((c, -i) for i, c in counts.items())
            best_i = -best_i
        alignments.append(best / len(cset) if cset else 1.0)
        window = doc.window(best_i, 1) if best_i >= 0 else set()
        window_negated = any(doc.has_negation[max(0, best_i - 1) : best_i + 2]) if best_i >= 0 else False
        for k, lw in enumerate(low):
            if _is_negation(lw):
                negations += 1
                unaligned_neg += not window_negated
            elif lw in DIRECTION_WORDS and ss[k] not in window:
                unaligned_dir += 1
            if lw in QUANTIFIERS and ss[k] not in window:
                unaligned_quant += 1
            opposite = _OPPOSITE.get(ss[k])
            if opposite and opposite & doc.where.keys():
                if ss[k] in doc.where:
                    known_opp += 1
                else:
                    novel_opp += 1
        for k in novel:
            lw = low[k]
            novel_freqs.append(freq.log_freq(lw))
            if any(
                lw.startswith(p) and len(lw) > len(p) + 2 and stem(lw[len(p) :]) in doc.where
                for p in _NEGATING_PREFIXES
            ) or any(p + lw in doc.lower for p in _NEGATING_PREFIXES):
                neg_prefix += 1
    common = sum(1 for f in novel_freqs if f > -9.0)
    dense = [
        content_total,
        novel_total / max(content_total, 1),
        novel_total,
        numbers,
        novel_numbers,
        names,
        novel_names,
        bigram_miss / max(bigrams, 1),
        trigram_miss / max(trigrams, 1),
        pair_miss / max(pairs, 1),
        pair_miss,
        negations,
        unaligned_neg,
        doc.negations / max(doc.words, 1) * 100,
        unaligned_dir,
        unaligned_quant,
        min(supports, default=1.0),
        min(alignments, default=1.0),
        sum(alignments) / max(len(alignments), 1),
        len(alignments),
        math.log1p(doc.words),
        content_total / max(doc.words, 1),
        far,
        far / max(far_n, 1),
        novel_opp,
        known_opp,
        neg_prefix,
        sum(novel_freqs) / len(novel_freqs) if novel_freqs else 0.0,
        max(novel_freqs, default=0.0),  # no new word: as if every new word were the commonest
        min(novel_freqs, default=0.0),
        common,
        len(novel_freqs) - common,
    ]
    return [float(x) for x in dense], buckets


Floats = npt.NDArray[np.float64]


class GroundingModel:
    """The shipped model: hashed novel-word weights, word frequencies and depth-3 trees as flat arrays."""

    def __init__(self, spec: dict[str, Any]) -> None:
        if spec.get("version") != FORMAT_VERSION:
            raise ValueError(f"grounding model format {spec.get('version')!r}, expected {FORMAT_VERSION}")
        self.freq = WordFrequencies(spec["frequencies"]["counts"], spec["frequencies"]["total"])
        self.word_weights = np.asarray(spec["novel_words"]["weights"], dtype=np.float64)
        trees = spec["trees"]
        self.tree_feature = np.asarray(trees["feature"], dtype=np.int64)  # (T, 7): heap-ordered splits
        self.tree_threshold = np.asarray(trees["threshold"], dtype=np.float64)  # go left when x <= threshold
        self.tree_leaf = np.asarray(trees["leaf"], dtype=np.float64)  # (T, 8)
        self.tree_base = float(trees["base"])
        self.threshold = float(spec["threshold"])  # on P(supported)
        self._rows = np.arange(len(self.tree_feature))

    @classmethod
    def load(cls, path: Path) -> GroundingModel:
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def vectorize(self, doc: Document, response: str) -> list[float]:
        dense, buckets = features(doc, response, self.freq)
        # The sum of the new words' weights, without the intercept: an answer with no new word scores 0.
        dense.append(float(self.word_weights[list(buckets)].sum()) if buckets else 0.0)
        return dense

    def supported(self, x: Floats) -> Floats:
        """P(supported) for each row of ``x`` (rows are ``vectorize`` outputs)."""
        n = x.shape[0]
        node = np.zeros((n, len(self._rows)), dtype=np.int64)
        rows = np.arange(n)[:, None]
        for _ in range(3):
            f = self.tree_feature[self._rows, node]
            t = self.tree_threshold[self._rows, node]
            node = 2 * node + 1 + (x[rows, f] > t)
        raw = self.tree_base + self.tree_leaf[self._rows, node - 7].sum(axis=1)
        out: Floats = 1.0 / (1.0 + np.exp(-raw))
        return out

    def score_pairs(self, pairs: Iterable[tuple[str, str]]) -> Floats:
        docs: dict[str, Document] = {}
        rows = []
        for context, response in pairs:
            doc = docs.get(context)
            if doc is None:
                if len(docs) > 64:
                    docs.clear()
                doc = docs[context] = Document(context)
            rows.append(self.vectorize(doc, response))
        if not rows:
            return np.zeros(0)
        return self.supported(np.asarray(rows, dtype=np.float64))


_lock = threading.Lock()
_models: dict[Path, GroundingModel] = {}


def load_model(path: Path | None = None) -> GroundingModel:
    """The model at ``path`` (default: the shipped one), loaded once per process."""
    path = path or MODELS_DIR / MODEL_FILE
    model = _models.get(path)
    if model is None:
        with _lock:
            model = _models.get(path)
            if model is None:
                model = _models[path] = GroundingModel.load(path)
    return model


def scorer() -> Scorer:
    model = load_model()

    def score(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        p = model.score_pairs((str(r.get("context") or ""), str(r.get("response") or "")) for r in records)
        return [{"score": round(float(v), 6), "label": int(v >= model.threshold)} for v in p]

    return score


class GroundingGuard:
    """Flags an answer that its sources do not support (``TRUST_UNGROUNDED``).

    Options: ``threshold`` on the ungrounded score (default: the model's own, picked on cross-validated train
    data), ``action`` (default ``warn``), ``max_findings`` (the least supported sentences to report) and
    ``model_path`` (another trained model file). Without sources the answer is allowed with score 0.
    """

    name: ClassVar[str] = "grounding"
    cpu_bound: ClassVar[bool] = True

    def __init__(
        self,
        threshold: float | None = None,
        action: str = "warn",
        max_findings: int = 3,
        model_path: str | None = None,
    ) -> None:
        self.action = Action(action)
        self.max_findings = max_findings
        # Loaded when a policy builds the guard (the loader does that off the event loop), once per process.
        self.model = load_model(Path(model_path) if model_path else None)
        self._threshold = threshold

    @property
    def threshold(self) -> float:
        if self._threshold is None:
            return 1.0 - self.model.threshold
        return self._threshold

    def check(self, context: GuardContext) -> Verdict:
        started = time.perf_counter()
        verdict = Verdict(self.name)
        text = context.text
        sources = [s for s in context.sources if s and s.strip()]
        if sources and text.strip() and context.direction is not Direction.INPUT:
            model = self.model
            doc = document("\n\n".join(sources))
            threshold = self.threshold
            verdict.score = 1.0 - float(model.supported(np.asarray([model.vectorize(doc, text)]))[0])
            if verdict.score >= threshold:
                verdict.action = self.action
                verdict.reason_codes.append(REASON)
                # Sentences are scored only for an answer that failed: the findings say where.
                spans = sentence_spans(text)
                rows = np.asarray([model.vectorize(doc, text[a:b]) for a, b in spans], dtype=np.float64)
                scores = 1.0 - model.supported(rows) if len(rows) else np.zeros(0)
                verdict.findings.extend(self._findings(text, spans, scores, threshold))
        verdict.elapsed_ms = (time.perf_counter() - started) * 1000
        return verdict

    def _findings(
        self, text: str, spans: Sequence[tuple[int, int]], scores: Floats, threshold: float
    ) -> list[Finding]:
        order = sorted(range(len(spans)), key=lambda i: -scores[i])[: self.max_findings]
        picked = [i for i in order if scores[i] >= threshold] or order[:1]
        return [
            Finding(
                "ungrounded_sentence",
                *_trim(text, *spans[i]),
                score=float(scores[i]),
                detail="least supported sentence",
            )
            for i in sorted(picked)
        ]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


# ---------------------------------------------------------------- training (scikit-learn, not at run time)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def word_frequencies(data_dir: Path, min_count: int = 2) -> WordFrequencies:
    """Lower-case word counts over the train texts of every task in ``data_dir`` (each distinct text once)."""
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for path in sorted(data_dir.glob("*/train.jsonl")):
        for record in _read_jsonl(path):
            for key in ("text", "context", "response"):
                value = record.get(key)
                if not isinstance(value, str) or not value:
                    continue
                if value in seen:
                    continue
                seen.add(value)
                for w in WORD.findall(value):
                    low = w.lower()
                    counts[low] = counts.get(low, 0) + 1
    total = sum(counts.values()) or 1
    kept = {w: c for w, c in sorted(counts.items()) if c >= min_count and not w[0].isdigit()}
    return WordFrequencies(kept, total)


def _complete_tree(nodes: Any) -> tuple[list[int], list[float], list[float]]:
    """A histogram-boosting tree of depth <= 3 (its ``nodes`` array) as a complete heap-ordered tree: 7 splits
    and 8 leaves, so inference walks every tree at once with three array lookups."""
    feature, threshold, leaf = [0] * 7, [1e300] * 7, [0.0] * 8

    def fill(node: int, slot: int, depth: int) -> None:
        row = nodes[node]
        if depth == 3:
            leaf[slot - 7] = float(row["value"])
            return
        if row["is_leaf"]:
            fill(node, 2 * slot + 1, depth + 1)
            fill(node, 2 * slot + 2, depth + 1)
            return
        feature[slot] = int(row["feature_idx"])
        threshold[slot] = float(row["num_threshold"])
        fill(int(row["left"]), 2 * slot + 1, depth + 1)
        fill(int(row["right"]), 2 * slot + 2, depth + 1)

    fill(0, 0, 0)
    return feature, threshold, leaf


# More of these never makes an answer more supported (monotone constraints: -1), and more of those never less
# (+1): the trees may not learn the reverse from one data set's quirks, which keeps them honest on others.
_LESS_SUPPORTED = frozenset(
    {
        "novel_fraction",
        "novel_words",
        "novel_numbers",
        "novel_names",
        "bigram_miss",
        "trigram_miss",
        "pair_miss_fraction",
        "pair_miss",
        "unaligned_negations",
        "unaligned_direction_words",
        "unaligned_quantifiers",
        "far_pairs",
        "far_pair_fraction",
        "novel_opposites",
        "negated_prefixes",
        "common_novel_words",
        "rare_novel_words",
    }
)
_MORE_SUPPORTED = frozenset(
    {"min_sentence_support", "min_sentence_alignment", "mean_sentence_alignment", "novel_word_logit"}
)


def train(data_dir: Path, out_dir: Path, seed: int, iterations: int = 200) -> dict[str, Any]:
    """Train on ``data_dir/grounding/train.jsonl``; ``iterations`` boosting rounds (fewer: a quick test)."""
    from threadpoolctl import threadpool_limits

    # One thread: the sums inside histogram boosting then come out the same on any machine, byte for byte.
    with threadpool_limits(limits=1):
        return _train(data_dir, out_dir, seed, iterations)


def _train(data_dir: Path, out_dir: Path, seed: int, iterations: int) -> dict[str, Any]:
    from scipy import sparse
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    records = _read_jsonl(data_dir / "grounding" / "train.jsonl")
    y = np.asarray([int(r["label"]) for r in records])
    groups = np.asarray([zlib.crc32(r["context"].encode()) for r in records])
    freq = word_frequencies(data_dir)
    docs: dict[str, Document] = {}
    dense_rows, bucket_rows = [], []
    for r in records:
        doc = docs.get(r["context"]) or docs.setdefault(r["context"], Document(r["context"]))
        dense, buckets = features(doc, r["response"], freq)
        dense_rows.append(dense)
        bucket_rows.append(sorted(buckets))
    indptr = np.cumsum([0] + [len(b) for b in bucket_rows])
    indices = np.asarray([i for b in bucket_rows for i in b], dtype=np.int64)
    words = sparse.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(records), HASH_BUCKETS))
    dense_x = np.asarray(dense_rows, dtype=np.float64)

    folds = list(GroupKFold(n_splits=5).split(dense_x, y, groups))
    word_model = LogisticRegression(C=1.0, max_iter=5000)
    # The trees learn from out-of-fold word scores, so they do not trust a score that saw its own label.
    oof_words = np.zeros(len(records))
    for fit, held in folds:
        word_model.fit(words[fit], y[fit])
        oof_words[held] = words[held] @ _rounded(word_model.coef_[0])
    word_model.fit(words, y)
    x = np.c_[dense_x, oof_words]

    monotone = [-1 if f in _LESS_SUPPORTED else 1 if f in _MORE_SUPPORTED else 0 for f in FEATURES]
    params: dict[str, Any] = {
        "max_iter": iterations,
        "max_depth": 3,
        "learning_rate": 0.05,
        "min_samples_leaf": 20,
        "l2_regularization": 1.0,
        "early_stopping": False,
        "monotonic_cst": monotone,
        "random_state": seed,
    }
    oof = np.zeros(len(records))
    for fit, held in folds:
        oof[held] = HistGradientBoostingClassifier(**params).fit(x[fit], y[fit]).decision_function(x[held])
    final = HistGradientBoostingClassifier(**params).fit(x, y)
    features_t, thresholds_t, leaves_t = [], [], []
    for (predictor,) in final._predictors:  # the fitted trees; scikit-learn has no public accessor for them
        f, t, v = _complete_tree(predictor.nodes)
        features_t.append(f)
        thresholds_t.append(t)
        leaves_t.append(v)
    base = float(np.ravel(final._baseline_prediction)[0])

    cv_prob = 1 / (1 + np.exp(-oof))
    threshold = _balanced_threshold(y, cv_prob)
    pred = cv_prob >= threshold
    tp = int((pred & (y == 1)).sum())
    precision = tp / max(int(pred.sum()), 1)
    recall = tp / max(int(y.sum()), 1)
    cv = {
        "roc_auc": round(float(roc_auc_score(y, cv_prob)), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / max(precision + recall, 1e-9), 4),
    }
    weights = [_r(w) for w in word_model.coef_[0]]
    spec = {
        "version": FORMAT_VERSION,
        "features": list(FEATURES),
        "threshold": _r(threshold),
        "novel_words": {
            "buckets": HASH_BUCKETS,
            "weights": weights,
        },
        "frequencies": {"total": freq.total, "counts": freq.counts},
        "trees": {
            "base": _r(base),
            "feature": features_t,
            "threshold": thresholds_t,  # not rounded: a split between two close values must stay between them
            "leaf": [[_r(v) for v in vs] for vs in leaves_t],
        },
        "training": {
            "records": len(records),
            "seed": seed,
            "cross_validation": cv,
            "params": {k: v for k, v in params.items() if k != "monotonic_cst"},
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    path.write_text(json.dumps(spec, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
    _models.pop(path, None)
    # The exported arrays must reproduce scikit-learn's own scores.
    check = GroundingModel(json.loads(path.read_text(encoding="utf-8")))
    mine = check.supported(
        np.c_[
            dense_x[:50],
            np.asarray([float(check.word_weights[b].sum()) for b in bucket_rows[:50]]),
        ]
    )
    x_full = np.c_[dense_x[:50], words[:50] @ _rounded(word_model.coef_[0])]
    theirs = final.decision_function(x_full)
    gap = float(np.abs(mine - 1 / (1 + np.exp(-theirs))).max())
    if gap > 1e-4:
        raise RuntimeError(
            f"the exported grounding trees do not reproduce scikit-learn's scores (gap {gap:.2g})"
        )
    return {"records": len(records), "cv": cv, "threshold": round(threshold, 4), "bytes": path.stat().st_size}


def _r(value: float) -> float:
    return float(f"{value:.6g}")


def _rounded(values: Floats) -> Floats:
    """Six significant digits, as shipped: the solver's last bits vary from run to run, the file must not."""
    return np.asarray([_r(float(v)) for v in values], dtype=np.float64)


def _balanced_threshold(y: npt.NDArray[np.int64], p: Floats) -> float:
    """The threshold on P(supported) with the best balanced accuracy (Youden's J) on cross-validated scores."""
    best, best_t = -1.0, 0.5
    positives, negatives = max(int(y.sum()), 1), max(int((y == 0).sum()), 1)
    for t in np.unique(np.round(p, 3)):
        pred = p >= t
        j = (pred & (y == 1)).sum() / positives - (pred & (y == 0)).sum() / negatives
        if j > best:
            best, best_t = float(j), float(t)
    return best_t
