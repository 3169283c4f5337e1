"""A regular expression tried only where one of its matches can begin: ``finditer``'s matches, found faster.

Python's ``re`` tries a pattern such as ``\\b(ignore|disregard|...)\\b...`` at every position of a text, and
on a text of a thousand characters nearly every attempt fails on its first character. :class:`PrefixedPattern`
reads the parsed pattern once for the literal strings every match begins with (or the line starts, for a
``^`` under ``re.MULTILINE``), finds them with ``str.find`` and calls ``pattern.match`` there only: in order,
going on after the end of each match as ``finditer`` does, so the matches are exactly ``finditer``'s.

Under ``re.IGNORECASE`` the strings are looked for in the lower-cased text, which is only sound when lower-
casing keeps every character in place and no character outside ASCII can stand for an ASCII letter (the dotted
and dotless i, the long s, the Kelvin sign); any other text, and any pattern without such a start, goes to ``finditer``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

_parser: Any = importlib.import_module("re._parser")  # the stdlib's own parser; no public API offers this

_MAX_STARTS = 64  # more alternative starts than this: scanning is no longer cheaper than the pattern itself
_KEEP = 6  # characters of each start that are looked for (enough to be rare, few enough to dedupe)
# Characters that re.IGNORECASE matches to an ASCII letter although str.lower() does not give that letter
# (or moves the text): the dotted and dotless i, the long s, the Kelvin sign.
_FOLDS_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")

Start = tuple[bool, str]  # (only at a line start, the literal text that follows)


class _Open(Exception):
    """A match can begin with something that is not a literal: no list of starts."""


def _chars(op: str, av: Any) -> set[str] | None:
    """The characters one ``LITERAL`` or ``IN`` matches, when that is a small literal set."""
    if op == "LITERAL":
        return {chr(av)}
    if op == "IN":
        out: set[str] = set()
        for item_op, item in av:
            if item_op.name == "LITERAL":
                out.add(chr(item))
            elif item_op.name == "RANGE" and item[1] - item[0] < 16:
                out.update(chr(c) for c in range(item[0], item[1] + 1))
            else:  # NEGATE, CATEGORY, a wide range ...
                return None
        return out
    return None


def _starts(items: Any, multiline: bool) -> tuple[set[Start], bool]:
    """The starts of a sequence of parsed items, and whether the sequence is exactly one of them."""
    heads: set[Start] = {(False, "")}
    for op_code, av in items:
        op = op_code.name
        if op in ("AT", "ASSERT", "ASSERT_NOT"):  # zero width: the match still begins with what follows
            if op == "AT" and av.name in ("AT_BEGINNING", "AT_BEGINNING_STRING"):
                if any(text for _, text in heads):
                    continue
                if av.name == "AT_BEGINNING_STRING" or not multiline:
                    raise _Open  # the start of the text only: rare, not worth a special case
                heads = {(True, "")}
            continue
        chars = _chars(op, av)
        if chars is not None:
            parts, complete = {(False, c) for c in chars}, True
        elif op == "SUBPATTERN":
            if av[1] or av[2]:  # flags changed inside the group
                return heads, False
            parts, complete = _starts(av[3], multiline)
        elif op == "BRANCH":
            parts, complete = set(), True
            for alternative in av[1]:
                found, whole = _starts(alternative, multiline)
                parts |= found
                complete = complete and whole
        elif op in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and av[0] >= 1:
            parts, _ = _starts(av[2], multiline)
            complete = False
        elif op in ("MAX_REPEAT", "MIN_REPEAT") and av[:2] == (0, 1):  # x? : with or without x
            parts, complete = _starts(av[2], multiline)
            parts = parts | {(False, "")}
        else:
            return heads, False
        grown = {(line or (inner and not text), text + more) for line, text in heads for inner, more in parts}
        width = _KEEP
        while len(grown) > _MAX_STARTS or any(len(text) > width for _, text in grown):
            if width == 1:
                return heads, False  # what is known so far is a start of every match
            width -= len(grown) > _MAX_STARTS
            grown = {(line, text[:width]) for line, text in grown}
            complete = False
        heads = grown
        if not complete:
            return heads, False
    return heads, True


def _minimal(starts: set[Start]) -> list[Start]:
    """The starts without one that begins with another (its places are found anyway)."""
    cut = sorted(starts, key=lambda s: (len(s[1]), s))
    kept: list[Start] = []
    for line, text in cut:
        if not any(text.startswith(k) and (k_line <= line) for k_line, k in kept):
            kept.append((line, text))
    return kept


class PrefixedPattern:
    """A compiled pattern and where its matches can begin; :meth:`finditer` gives ``pattern.finditer``'s
    matches."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.ignorecase = bool(pattern.flags & re.IGNORECASE)
        self._read = False  # the pattern is read on first use: parsing costs about as much as compiling
        self._starts: list[Start] | None = None
        self.literals: list[str] = []
        self.line_starts: list[str] = []

    @property
    def starts(self) -> list[Start] | None:
        """Where a match can begin, or None when that is not known (every text goes to ``finditer``)."""
        if not self._read:
            self._starts = self._find_starts()
            if self._starts is not None:
                self.literals = [text for line, text in self._starts if not line]
                self.line_starts = [text for line, text in self._starts if line]
            self._read = True
        return self._starts

    def _find_starts(self) -> list[Start] | None:
        try:
            parsed = _parser.parse(self.pattern.pattern, self.pattern.flags)
            if parsed.getwidth()[0] == 0:  # could match the empty string: finditer's rules for that differ
                raise _Open
            heads, _ = _starts(parsed.data, bool(self.pattern.flags & re.MULTILINE))
        except _Open:
            return None
        if any(not line and (not text or (len(text) == 1 and text.isalpha())) for line, text in heads):
            return None  # a match can begin anywhere, or at any of some letters: the pattern alone is faster
        if self.ignorecase:
            if any(not text.isascii() for _, text in heads):
                return None
            heads = {(line, text.lower()) for line, text in heads}
        return _minimal(heads)

    def _searchable(self, text: str, lower: str) -> bool:
        if not self.ignorecase or text.isascii():
            return True
        return len(lower) == len(text) and not any(c in text for c in _FOLDS_TO_ASCII)

    def _places(self, text: str, lower: str) -> list[int]:
        haystack = lower if self.ignorecase else text
        places: list[int] = []
        for literal in self.literals:
            at = haystack.find(literal)
            while at >= 0:
                places.append(at)
                at = haystack.find(literal, at + 1)
        if self.line_starts:
            places.append(0)
            at = text.find("\n")
            while at >= 0:
                places.append(at + 1)
                at = text.find("\n", at + 1)
        places.sort()
        return places

    def finditer(self, text: str, lower: str | None = None) -> Iterator[re.Match[str]]:
        """``self.pattern.finditer(text)``. ``lower`` is ``text.lower()`` when the caller has it already."""
        if self.starts is None:
            yield from self.pattern.finditer(text)
            return
        if lower is None and self.ignorecase:
            lower = text.lower()
        if not self._searchable(text, lower or text):
            yield from self.pattern.finditer(text)
            return
        end = 0
        match = self.pattern.match
        for at in self._places(text, lower or text):
            if at < end:
                continue
            found = match(text, at)
            if found is not None:
                end = found.end()  # never empty (see __init__), so the next try is further on
                yield found

    def search(self, text: str, lower: str | None = None) -> re.Match[str] | None:
        """``self.pattern.search(text)``."""
        return next(self.finditer(text, lower), None)
