"""Toxicity: insults, profanity, hate and harassment (``BIAS_TOXICITY``).

A :class:`~aiguardian.guards.ml.LinearModel` over hashed character and word n-grams (character n-grams see
through ``f*ck`` and ``idiooot``) and a few hand-written signals: profanity, insults and slurs from a small
lexicon, insults aimed at the reader (``you are an idiot``), dehumanising phrases, shouting. Trained on
``shared/eval/toxicity/train.jsonl`` by ``aiguardian guards train toxicity``.
"""

from __future__ import annotations

import re
from typing import ClassVar

from aiguardian.guards.ml.classifier import TextClassifierTask
from aiguardian.guards.ml.features import HashingFeaturizer
from aiguardian.guards.ml.guard import ClassifierGuard

_PROFANITY = (
    r"f+u+c+k+\w*|f\*+k\w*|fck\w*|sh+i+t+\w*|bullshit|crap|damn|hell|piss\w*|bitch\w*|b!tch\w*|bastard\w*|"
    r"ass|asses|asshole\w*|arse\w*|dick\w*|cock\w*|pussy|pussies|cunt\w*|twat\w*|wank\w*|prick\w*|"
    r"motherf\w+|mf|wtf|stfu|gtfo|suck\w*|screw you|hoe|hoes|thot\w*|slut\w*|whore\w*|skank\w*"
)
_INSULT = (
    r"idiot\w*|stupid\w*|moron\w*|dumb\w*|imbecile\w*|retard\w*|loser\w*|pathetic|disgusting|scum\w*|"
    r"trash|garbage|worthless|useless|ugly|fat|clown\w*|fool\w*|jerk\w*|creep\w*|pig|pigs|liar\w*|"
    r"hypocrit\w*|ignorant|coward\w*|traitor\w*|degenerate\w*|lunatic\w*|psycho\w*|freak\w*|nutjob\w*|"
    r"snowflake\w*|libtard\w*|sheep|morons|brainless|clueless|incompetent|evil|vile|filth\w*"
)
_SLUR = (
    r"nigg\w*|n[i1]gg\w*|fag\w*|f[a@]g\w*|dyke\w*|tranny\w*|kike\w*|spic\w*|chink\w*|wetback\w*|"
    r"raghead\w*|towelhead\w*|gook\w*|coon\w*|beaner\w*|paki\w*|retard\w*|queer\w*|homo\b|redneck\w*|"
    r"white trash|cracker\w*|savage\w*|ghetto"
)
_SIGNALS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("profanity", re.compile(rf"\b({_PROFANITY})\b", re.IGNORECASE)),
    ("insult", re.compile(rf"\b({_INSULT})\b", re.IGNORECASE)),
    ("slur", re.compile(rf"\b({_SLUR})", re.IGNORECASE)),
    (
        "insult_at_reader",
        re.compile(
            rf"\b(you|u|ur|you're|youre|your)\b\W+(\w+\W+){{0,3}}?({_INSULT}|{_PROFANITY}|{_SLUR})\b"
            r"|\b(shut up|go to hell|kill yourself|kys|go die|drop dead|get lost)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "dehumanising",
        re.compile(
            r"\b(are|is|be|like)\s+(\w+\s+)?(animals|vermin|parasites|subhuman|rats|cockroaches|apes|monkeys|"
            r"a disease|a plague|filth)\b|\b(should|must|deserve to|need to) (all )?(die|be (shot|killed|hanged|"
            r"deported|exterminated|gassed))\b",
            re.IGNORECASE,
        ),
    ),
)
_LETTERS = re.compile(r"[A-Za-z]")
_UPPER = re.compile(r"[A-Z]")

SIGNAL_NAMES: tuple[str, ...] = (*(name for name, _ in _SIGNALS), "shouting")


def signals(text: str) -> list[float]:
    """The hand-written signals of one text, each in [0, 1]."""
    head = text[:5000]
    values = [min(len(pattern.findall(head)), 3) / 3 for _, pattern in _SIGNALS]
    letters = len(_LETTERS.findall(head))
    values.append(len(_UPPER.findall(head)) / letters if letters >= 20 else 0.0)
    return values


TASK = TextClassifierTask(
    "toxicity",
    "toxicity.aigml",
    featurizer=HashingFeaturizer(char_ngrams=(2, 5), word_ngrams=(1, 2), bits=20),
    signals=signals,
    signal_names=SIGNAL_NAMES,
    fit_options={"c_grid": (0.5, 1.0, 2.0, 4.0), "folds": 3, "min_df": 2},
)
scorer = TASK.scorer
train = TASK.train


class ToxicityGuard(ClassifierGuard):
    """Toxic language: insults, profanity aimed at people, hate and harassment."""

    name: ClassVar[str] = "toxicity"
    task: ClassVar[TextClassifierTask] = TASK
    reason: ClassVar[str] = "BIAS_TOXICITY"
    finding: ClassVar[str] = "toxicity"
