"""Tokens and their features for the PII sequence tagger.

A token is a URL, an e-mail address, a run of word characters or one other non-space character, so every
entity boundary of the training data falls on a token boundary. Each token is described by its own form
(lower-cased word, shape, affixes, a few word lists), by the validated patterns that cover it, by line breaks
around it, and by the same facts about its neighbours. Nothing in it names a data source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

from aiguardian.guards.pii.patterns import Match

TOKEN = re.compile(
    r"(?:https?://|www\.)[^\s<>\"'()\[\]{}]*[^\s<>\"'()\[\]{}.,;:!?*]"
    r"|[\w.%+-]{1,64}@[\w-]+(?:\.[\w-]+)+"
    r"|\w+"
    r"|[^\w\s]"
)

# Small closed word lists: words whose role is stable across any text, not entity values.
_WORDS = {
    "month": (
        "january february march april may june july august september october november december "
        "jan feb mar apr jun jul aug sep sept oct nov dec"
    ),
    "weekday": (
        "monday tuesday wednesday thursday friday saturday sunday mon tue tues wed thu thur thurs fri sat sun"
    ),
    "honorific": "mr mrs ms miss mx dr prof sir madam mister sr jr rev hon lady lord dame",
    "street": (
        "street st avenue ave road rd lane ln drive dr boulevard blvd way court ct place pl square sq terrace "
        "crescent close parkway pkwy highway hwy circle cir alley trail path row gardens park plaza hill hills "
        "rapids ridge view walk straße strasse str weg gasse platz allee ulica ul rue via calle avenida rua "
        "vej gade vei gata katu utca út útja laan straat piazza corso viale plein"
    ),
    "unit": "apt apartment suite ste unit floor fl flat room box po bldg building",
    "org_suffix": (
        "inc ltd llc plc corp corporation co company group gmbh ag sa sas srl bv nv oy ab as kg spa "
        "limited partners associates foundation university bank holdings"
    ),
    "age_word": "age aged old years year yo y",
    "kin": (
        "name named called mother father son daughter wife husband brother sister friend uncle aunt "
        "boss colleague patient doctor"
    ),
}
_WORD_LISTS = {name: frozenset(words.split()) for name, words in _WORDS.items()}

_SHAPE = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    "XXXXXXXXXXXXXXXXXXXXXXXXXXxxxxxxxxxxxxxxxxxxxxxxxxxxdddddddddd",
)
_RUNS = re.compile(r"(.)\1{3,}")
_SHORT_RUNS = re.compile(r"(.)\1+")


def tokenize(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in TOKEN.finditer(text)]


def _shape(word: str) -> str:
    shape = word.translate(_SHAPE)
    if not shape.isascii():
        shape = "".join(
            c if c in "Xxd" or not c.isalnum() else "X" if c.isupper() else "x" if c.isalpha() else "d"
            for c in shape
        )
    return shape


@lru_cache(maxsize=65536)
def word_features(word: str) -> tuple[str, ...]:
    """Features of a token's own form; cached, since words repeat."""
    lower = word.lower()
    shape = _shape(word)
    feats = [
        "w=" + lower[:24],
        "sh=" + _RUNS.sub(r"\1\1\1", shape)[:12],
        "ss=" + _SHORT_RUNS.sub(r"\1", shape)[:8],
        "p2=" + lower[:2],
        "p3=" + lower[:3],
        "s2=" + lower[-2:],
        "s3=" + lower[-3:],
        "s4=" + lower[-4:],
        "len=" + str(min(len(word), 10)),
    ]
    if word.isdigit():
        feats.append("digits=" + str(min(len(word), 20)))
    elif any(c.isdigit() for c in word):
        feats.append("has_digit")
    if not word.isascii():
        feats.append("non_ascii")
    if "@" in word:
        feats.append("has_at")
    if "://" in word or lower.startswith("www."):
        feats.append("url")
    for name, words in _WORD_LISTS.items():
        if lower in words:
            feats.append("list=" + name)
    return tuple(feats)


# Features of a neighbour: a subset of the token's own, renamed by offset.
_CONTEXT_PREFIXES = ("w=", "ss=", "list=", "digits=")


@lru_cache(maxsize=65536)
def _case(word: str) -> str:
    if not word[0].isalpha():
        return "none"
    if word[0].isupper():
        return "title" if len(word) == 1 or word[1:].islower() else "upper" if word.isupper() else "capital"
    return "lower" if word.islower() else "mixed"


@lru_cache(maxsize=65536)
def _neighbour(word: str, offset: str) -> tuple[str, ...]:
    return tuple(offset + f for f in word_features(word) if f.startswith(_CONTEXT_PREFIXES))


_SENTENCE_END = frozenset('.!?:;"')


@lru_cache(maxsize=4096)
def _prefixed(kinds: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    return tuple(prefix + kind for kind in kinds)


def _bucket(n: int) -> str:
    return str(n) if n < 4 else "4-6" if n < 7 else "7+"


def _layout(text: str, tokens: list[tuple[int, int]]) -> list[list[str]]:
    """Where each token sits in its line, and whether the text is a block of short lines (a letterhead, a
    signature, an address label) or prose: the same words are tagged differently in the two."""
    lines: list[list[int]] = [[]]
    for i in range(len(tokens)):
        if i and "\n" in text[tokens[i - 1][1] : tokens[i][0]]:
            lines.append([])
        lines[-1].append(i)
    short = sum(1 for line in lines if len(line) <= 5)
    style = "block" if len(lines) >= 3 and short * 2 >= len(lines) else "prose"
    out: list[list[str]] = [[] for _ in tokens]
    for number, line in enumerate(lines):
        size = "ll=" + _bucket(len(line))
        for position, i in enumerate(line):
            feats = out[i]
            feats.append(size)
            feats.append("lp=" + _bucket(position) + "@" + style)
            if position == 0:
                feats.append("line_start@" + style)
                if number == 0:
                    feats.append("first_line")
            if position == len(line) - 1:
                feats.append("line_end@" + style)
    return out


def sequence_features(
    text: str,
    tokens: list[tuple[int, int]],
    matches: list[Match],
    gazetteer: Mapping[str, tuple[str, ...]] | None = None,
) -> list[list[str]]:
    """One list of feature strings per token."""
    n = len(tokens)
    words = [text[a:b] for a, b in tokens]
    # Capitals mean something only in a text that uses them.
    suffix = "/lc" if text.islower() else ""
    cases = ["cs=" + _case(w) + suffix for w in words]
    listed: list[tuple[str, ...]] = [()] * n
    if gazetteer:
        listed = [gazetteer.get(w.lower(), ()) for w in words]
    layout = _layout(text, tokens)
    pattern_feats: list[list[str]] = [[] for _ in range(n)]
    if matches:
        starts = [a for a, _ in tokens]
        j = 0
        for match in matches:
            while j < n and tokens[j][1] <= match.start:
                j += 1
            k = j
            while k < n and starts[k] < match.end:
                if tokens[k][0] >= match.start and tokens[k][1] <= match.end:
                    pattern_feats[k].append(("pb=" if tokens[k][0] == match.start else "pi=") + match.type)
                k += 1
    gz_own = [_prefixed(kinds, "gz=") for kinds in listed]
    left = [
        (*_neighbour(w, "-1:"), "-1:" + c, *["-1:" + f for f in p], *_prefixed(g, "-1:gz="))
        for w, c, p, g in zip(words, cases, pattern_feats, listed, strict=True)
    ]
    right = [
        (*_neighbour(w, "+1:"), "+1:" + c, *["+1:" + f for f in p], *_prefixed(g, "+1:gz="))
        for w, c, p, g in zip(words, cases, pattern_feats, listed, strict=True)
    ]
    lowered = [w.lower()[:16] for w in words]
    out: list[list[str]] = []
    for i, (word, (start, end)) in enumerate(zip(words, tokens, strict=True)):
        feats = [*word_features(word), cases[i], *pattern_feats[i], *gz_own[i], *layout[i]]
        if i == 0 or words[i - 1] in _SENTENCE_END:
            # Capitals say little at the start of a sentence.
            feats.append("sentence_start")
        if i and tokens[i - 1][1] == start:
            feats.append("glued_before")
        if i + 1 < n and tokens[i + 1][0] == end:
            feats.append("glued_after")
        if i:
            feats.extend(left[i - 1])
            feats.append("w-1|w=" + lowered[i - 1] + "|" + lowered[i])
            if i > 1:
                feats.extend(_neighbour(words[i - 2], "-2:"))
        else:
            feats.append("BOS")
        if i + 1 < n:
            feats.extend(right[i + 1])
            if i + 2 < n:
                feats.extend(_neighbour(words[i + 2], "+2:"))
        else:
            feats.append("EOS")
        out.append(feats)
    return out
