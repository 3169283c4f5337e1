"""Invisible and look-alike text: characters that hide instructions from the people reading a prompt.

- ``TRUST_INVISIBLE_TEXT``: Unicode tag characters (U+E0000 block: they spell ASCII no one sees; the emoji
  flags of England, Scotland and Wales are the one legitimate use and are let through), bidirectional
  overrides, embeddings and isolates (U+202A-U+202E, U+2066-U+2069: "Trojan Source"), variation selectors of
  the supplement block (U+E0100-U+E01EF: bytes smuggled after a character), and zero-width characters
  (U+200B, U+2060-U+2064, U+FEFF past the start, U+180E; U+200C/U+200D only where no script or emoji
  sequence needs them).
- ``TRUST_CONFUSABLE_TEXT``: words that mix look-alike scripts (``paypal`` spelt with a Cyrillic ``a``), words made
  only of Cyrillic or Greek letters that look Latin inside Latin text, and words in "mathematical" or
  fullwidth letters (``ignore`` in MATHEMATICAL BOLD), a common way around keyword filters.

Pure standard library (``unicodedata``); plain ASCII text costs one ``str.isascii()`` call.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from typing import ClassVar, Literal

from aiguardian.guards.base import Action, Finding, GuardContext, Verdict

INVISIBLE = "TRUST_INVISIBLE_TEXT"
CONFUSABLE = "TRUST_CONFUSABLE_TEXT"

_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]+")
_SELECTORS = re.compile("[\U000e0100-\U000e01ef]+")
_ZERO_WIDTH = re.compile("[\u200b\u2060-\u2064\ufeff\u180e\u200c\u200d]+")
_NON_ASCII_WORD = re.compile(r"\w*[^\x00-\x7f]\w*")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_BLACK_FLAG = "\U0001f3f4"
_CANCEL_TAG = "\U000e007f"

# Scripts whose letters pass for one another; mixing them inside one word is the classic homoglyph trick.
_LOOKALIKE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"})
# Cyrillic and Greek letters that look like Latin ones.
_LATIN_LOOKALIKES = frozenset(
    "аеорсуххіјѕԁԛԝһӏаАВЕКМНОРСТХЅІЈԌԚԜ"  # Cyrillic
    "οαινκρτυχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"  # Greek
)
_STYLED = ("MATHEMATICAL", "FULLWIDTH")

_SCORE_TAGS = 1.0
_SCORE_SELECTORS = 0.9
_SCORE_BIDI = 0.8
_SCORE_CONFUSABLE = 0.8


@lru_cache(maxsize=4096)
def _script(char: str) -> str:
    """The first word of a letter's Unicode name (``LATIN``, ``CYRILLIC``, ``MATHEMATICAL`` ...), or ``""``."""
    if not char.isalpha():
        return ""
    return unicodedata.name(char, "").split(" ", 1)[0]


def _zero_width_needed(text: str, start: int, end: int) -> bool:
    """Whether a run of ZWJ/ZWNJ sits where a script or an emoji sequence uses it."""
    run = text[start:end]
    if any(c not in "\u200c\u200d" for c in run):
        return False
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    for neighbour in (before, after):
        if not neighbour:
            continue
        category = unicodedata.category(neighbour)
        if category == "So" or neighbour == "\ufe0f" or 0x1F000 <= ord(neighbour) <= 0x1FAFF:
            return True  # emoji sequence (family, profession, skin-tone joins)
        if category[0] in "LM" and _script(neighbour) not in ("LATIN", ""):
            return True  # Persian, Arabic, Indic scripts join and break letters with these
    return False


def find(text: str) -> list[Finding]:
    """Every invisible run and confusable word of ``text``, with spans."""
    if text.isascii():
        return []
    findings: list[Finding] = []
    for match in _TAGS.finditer(text):
        start, end = match.span()
        if (
            start
            and text[start - 1] == _BLACK_FLAG
            and match.group().endswith(_CANCEL_TAG)
            and end - start <= 7
        ):
            continue  # subdivision flag emoji
        findings.append(
            Finding("tag_characters", start, end, _SCORE_TAGS, f"{end - start} hidden characters")
        )
    for match in _SELECTORS.finditer(text):
        findings.append(Finding("variation_selectors", *match.span(), _SCORE_SELECTORS))
    for match in _BIDI.finditer(text):
        findings.append(Finding("bidi_control", *match.span(), _SCORE_BIDI))
    zero_width = [
        m.span()
        for m in _ZERO_WIDTH.finditer(text)
        if not (m.start() == 0 and m.group() == "\ufeff") and not _zero_width_needed(text, *m.span())
    ]
    if zero_width:
        count = sum(end - start for start, end in zero_width)
        score = min(1.0, 0.3 + 0.15 * count)  # one stray zero-width space from a copy and paste is not enough
        findings.extend(Finding("zero_width", start, end, score) for start, end in zero_width)
    findings.extend(_confusables(text))
    return findings


def _non_ascii_words(text: str) -> Iterator[re.Match[str]]:
    """``_NON_ASCII_WORD.finditer(text)`` in linear time: the pattern alone retries every position of a long
    ASCII word (quadratic). The leftmost match from ``pos`` begins where the run of word characters before
    the first non-ASCII character at or after ``pos`` begins (not before ``pos``), and is the pattern's
    match there."""
    pos = 0
    for found in _NON_ASCII.finditer(text):
        char = found.start()
        if char < pos:
            continue
        start = char
        while start > pos and (text[start - 1].isalnum() or text[start - 1] == "_"):  # re's \w
            start -= 1
        match = _NON_ASCII_WORD.match(text, start) or _NON_ASCII_WORD.search(text, pos)
        if match is None:  # cannot happen (text[start:char] are word characters): the pattern's answer
            return
        yield match
        pos = match.end()


def _confusables(text: str) -> list[Finding]:
    found: list[Finding] = []
    latin_words = sum(1 for w in text.split() if w.isascii() and w.isalpha())
    judged: dict[str, str | None] = {}  # a word repeated through a text is judged once
    for match in _non_ascii_words(text):
        word = match.group()
        if word in judged:
            detail = judged[word]
        else:
            detail = judged[word] = _confusable(word, latin_words)
        if detail:
            found.append(Finding("confusable", *match.span(), _SCORE_CONFUSABLE, detail))
    return found


def _confusable(word: str, latin_words: int) -> str | None:
    """Why a word with non-ASCII letters looks like a disguise, or None."""
    scripts = {_script(c) for c in set(word)} - {""}
    if not scripts:
        return None
    if any(s in _STYLED for s in scripts):
        return "styled letters"
    if len(scripts & _LOOKALIKE_SCRIPTS) >= 2:
        return "mixed scripts: " + ", ".join(sorted(scripts))
    if (
        scripts <= {"CYRILLIC", "GREEK"}
        and len(word) >= 3
        and latin_words >= 3
        and all(c in _LATIN_LOOKALIKES for c in word if c.isalpha())
    ):
        return "look-alike letters"
    return None


class UnicodeGuard:
    """Invisible characters and look-alike words. Options: ``threshold`` (default 0.5), ``action`` (``block``
    or ``warn``), ``confusables`` (also look for homoglyph words; default true)."""

    name: ClassVar[str] = "unicode"
    cpu_bound: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True  # same options and context, same verdict: the pipeline may reuse it

    def __init__(
        self, threshold: float = 0.5, action: Literal["block", "warn"] = "block", confusables: bool = True
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if action not in ("block", "warn"):
            raise ValueError("action must be 'block' or 'warn'")
        self.threshold = threshold
        self.action = Action(action)
        self.confusables = confusables

    def check(self, context: GuardContext) -> Verdict:
        verdict = Verdict(guard=self.name)
        findings = [f for f in find(context.text) if self.confusables or f.type != "confusable"]
        if not findings:
            return verdict
        verdict.score = max(f.score for f in findings)
        verdict.findings = findings
        if verdict.score >= self.threshold:
            verdict.action = self.action
            codes = []
            if any(f.type != "confusable" and f.score >= self.threshold for f in findings):
                codes.append(INVISIBLE)
            if any(f.type == "confusable" and f.score >= self.threshold for f in findings):
                codes.append(CONFUSABLE)
            verdict.reason_codes = codes
        return verdict
