"""Cutting a text into segments (lines, and sentences of long lines) with their character spans, so a guard can
score each part of a document and point at the one that scored high."""

from __future__ import annotations

import re

_LINE = re.compile(r"[^\n]+")
_SENTENCE_END = re.compile(r"(?<=[.!?;:|])\s+(?=\S)")


def segments(text: str, long_line: int = 400, max_segments: int = 200) -> list[tuple[int, int]]:
    """``(start, end)`` spans of the non-blank lines of ``text``; lines longer than ``long_line`` characters are
    cut after sentence punctuation. Past ``max_segments`` the rest of the text is one last segment."""
    spans: list[tuple[int, int]] = []
    for line in _LINE.finditer(text):
        start, end = line.span()
        if not line.group().strip():
            continue
        if end - start <= long_line:
            spans.append((start, end))
            continue
        cut = start
        for boundary in _SENTENCE_END.finditer(text, start, end):
            if boundary.start() - cut >= 20:
                spans.append((cut, boundary.start()))
                cut = boundary.end()
        spans.append((cut, end))
    if len(spans) > max_segments:
        spans = [*spans[: max_segments - 1], (spans[max_segments - 1][0], spans[-1][1])]
    return spans
