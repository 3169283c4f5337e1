"""Identity attacks and stereotyping generalisations about social groups (``BIAS_STEREOTYPE``).

A :class:`~aiguardian.guards.ml.LinearModel` over hashed n-grams and hand-written signals: a group is named
(a small lexicon of social groups: gender, race and ethnicity, nationality, religion, age, disability, sexual
orientation, class, appearance) *and* something is said about all of them (``women are``, ``all Muslims``,
``those people always``, ``typical of``, ``because he was black``). Naming a group alone is not a
stereotype; the model learns that from the neutral statements it is trained on. Trained on
``shared/eval/bias/train.jsonl`` by ``aiguardian guards train bias``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from aiguardian.guards.ml.classifier import TextClassifierTask
from aiguardian.guards.ml.data import plain_sentences, read_labelled, train_file
from aiguardian.guards.ml.features import HashingFeaturizer
from aiguardian.guards.ml.guard import ClassifierGuard
from aiguardian.guards.prefixed import PrefixedPattern

GROUPS = (
    r"wom[ae]n|girls?|females?|ladies|lady|men|man|boys?|males?|guys|mothers?|moms?|wives|wife|husbands?|"
    r"blacks?|black (people|men|women|folks?|guys?|kids?)|whites?|white (people|men|women|folks?|guys?)|"
    r"african[- ]americans?|africans?|asians?|chinese|japanese|koreans?|indians?|latin[oax]s?|latinx|hispanics?|"
    r"mexicans?|arabs?|middle[- ]eastern(ers)?|native americans?|natives|indigenous|immigrants?|"
    r"migrants?|refugees?|foreigners?|illegals?|aliens?|americans?|russians?|germans?|french|british|irish|"
    r"italians?|poles|polish|jews?|jewish|muslims?|islam(ic)?|christians?|catholics?|hindus?|atheists?|"
    r"mormons?|gays?|lesbians?|bisexuals?|homosexuals?|trans(gender)?( people| women| men)?|queers?|lgbt\w*|"
    r"old (people|men|women|folks?)|elderly|seniors?|boomers?|teenagers?|teens?|millennials?|young people|"
    r"disabled|cripples?|autistic|deaf|blind|wheelchair users?|mentally ill|retard\w*|"
    r"poor (people|folks?)|the poor|rich (people|folks?)|the rich|homeless|welfare|ghetto|rednecks?|"
    r"fat (people|folks?)|obese|short (people|men)|ugly (people|women)|gypsies|gypsy|roma"
)
_G = rf"\b({GROUPS})\b"
_SIGNALS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("group", re.compile(_G, re.IGNORECASE)),
    (
        "generalisation",
        re.compile(
            rf"\b(all|most|every|typical|those|these|such|many|so many|the)\s+(\w+\s+)?{_G}\s+(are|is|were|can't|"
            rf"cannot|don't|do not|never|always|should|shouldn't|will|won't|just|only|tend|love|hate|like)\b"
            rf"|{_G}\s+(are|is)\s+(all|always|never|so|too|just|naturally|inherently|genetically|basically|"
            r"known|only|not|bad|good|lazy|violent|stupid|dangerous|criminals?|terrorists?|greedy|weak|dirty)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "because_group",
        re.compile(
            rf"\b(because|since|as)\s+(he|she|they|he's|she's|they're|i'm|i am|we)\s+(is|was|were|are|am)?\s*"
            rf"(an?\s+)?(\w+\s+)?{_G}",
            re.IGNORECASE,
        ),
    ),
    (
        "absolutes",
        re.compile(
            r"\b(always|never|all of them|every single|by nature|naturally|of course|typical)\b", re.I
        ),
    ),
    (
        "othering",
        re.compile(
            r"\b(those|these|them|their kind|such) (people|folks|types|kind|ones)\b|\b(go back|send them back|"
            r"don't belong|not welcome|take our|taking over|invading|breed\w*|infest\w*)\b",
            re.IGNORECASE,
        ),
    ),
)

SIGNAL_NAMES: tuple[str, ...] = tuple(name for name, _ in _SIGNALS)


_NEEDS_GROUP = frozenset({"generalisation", "because_group"})
# The same matches as the patterns' finditer, tried only where one can begin (when that is known).
_PREFIXED = tuple((name, PrefixedPattern(pattern)) for name, pattern in _SIGNALS)


def signals(text: str) -> list[float]:
    """The hand-written signals of one text, each in [0, 1]. The patterns that need a group are skipped when
    the text names none."""
    head = text[:5000]
    lower = head.lower()
    values: list[float] = []
    for name, pattern in _PREFIXED:
        if name in _NEEDS_GROUP and not values[0]:
            values.append(0.0)
            continue
        values.append(min(sum(1 for _ in pattern.finditer(head, lower)), 3) / 3)
    return values


TASK = TextClassifierTask(
    "bias",
    "bias.aigml",
    featurizer=HashingFeaturizer(char_ngrams=(2, 5), word_ngrams=(1, 2), bits=20),
    signals=signals,
    signal_names=SIGNAL_NAMES,
    fit_options={"c_grid": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), "folds": 5, "min_df": 2},
)
scorer = TASK.scorer
PLAIN_SENTENCES = 3000


def train(data_dir: Path, out_dir: Path, seed: int) -> dict[str, Any]:
    """Train on ``bias/train.jsonl`` plus ordinary sentences as negatives.

    The bias set's negatives are template narratives (BBQ) and anti-stereotypes, so alone it teaches that any
    plain sentence is a stereotype ("hi" scored 0.86). Sentences of consistent summaries and benign prompts
    from the other tasks' *training* files (:func:`plain_sentences`) teach that naming no group and
    generalising about no one is not bias.
    """
    texts, labels = read_labelled(train_file(data_dir, "bias"))
    extra = plain_sentences(data_dir, PLAIN_SENTENCES, seed)
    all_labels = np.concatenate([labels, np.zeros(len(extra), dtype=np.int64)])
    summary = TASK.train_on([*texts, *extra], all_labels, out_dir, seed)
    return {**summary, "plain_sentences": len(extra)}


class BiasGuard(ClassifierGuard):
    """Identity attacks and stereotyping generalisations about social groups.

    The model is trained for F1 on sentences that nearly all name a group, so on everyday text it is quick to
    fire. The guard asks more: by default a threshold of ``DEFAULT_THRESHOLD`` (not the training one), and a
    text that names no group and has no othering phrase (``those people``, ``go back``) counts half its score.
    """

    name: ClassVar[str] = "bias"
    task: ClassVar[TextClassifierTask] = TASK
    reason: ClassVar[str] = "BIAS_STEREOTYPE"
    finding: ClassVar[str] = "stereotype"
    DEFAULT_THRESHOLD: ClassVar[float] = 0.6
    NO_GROUP_FACTOR: ClassVar[float] = 0.5

    def __init__(
        self,
        threshold: float | None = None,
        action: Literal["block", "warn"] = "block",
        models_dir: str | None = None,
    ) -> None:
        super().__init__(self.DEFAULT_THRESHOLD if threshold is None else threshold, action, models_dir)

    def score(self, text: str) -> tuple[float, tuple[int, int] | None]:
        value, span = super().score(text)
        names_a_group = _SIGNALS[0][1].search(text) or _SIGNALS[-1][1].search(text)
        return (value if names_a_group else value * self.NO_GROUP_FACTOR), span
