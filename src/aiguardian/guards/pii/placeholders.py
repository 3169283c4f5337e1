"""Reversible placeholders: ``[EMAIL_1]`` stands for one value within one request.

The same value gets the same placeholder in every message of the request (so the model can still tell that two
mentions are one person), and the table that maps placeholders back to values lives in the request's ``state``
under a namespace per guard, never anywhere else. ``restore`` accepts the forms a model tends to write back
(``[email_1]``, ``[ EMAIL_1 ]``, ``[EMAIL 1]``), any number of times.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_PLACEHOLDER = re.compile(r"\[\s*([A-Za-z][A-Za-z_]*?)[_ ](\d{1,4})\s*\]")


def _table(state: dict[str, Any], namespace: str) -> dict[str, Any]:
    table: dict[str, Any] = state.setdefault(namespace, {})
    table.setdefault("values", {})  # placeholder -> original value
    table.setdefault("placeholders", {})  # "TYPE\x00value" -> placeholder
    table.setdefault("counts", {})  # TYPE -> last number used
    return table


def placeholder_for(kind: str, value: str, state: dict[str, Any], namespace: str, avoid: str = "") -> str:
    """The placeholder of ``value`` (made on first sight); numbers whose placeholder already occurs in
    ``avoid`` (the caller's own text) are skipped so that restoring never rewrites the caller's words."""
    table = _table(state, namespace)
    key = kind + "\x00" + value
    existing: str | None = table["placeholders"].get(key)
    if existing is not None:
        return existing
    number = int(table["counts"].get(kind, 0))
    while True:
        number += 1
        candidate = f"[{kind}_{number}]"
        if candidate not in avoid:
            break
    table["counts"][kind] = number
    table["placeholders"][key] = candidate
    table["values"][candidate] = value
    return candidate


def _known_occurrences(
    text: str, taken: list[tuple[int, int, str]], state: dict[str, Any], namespace: str, min_length: int
) -> list[tuple[int, int, str]]:
    """Other occurrences of values already replaced in this request (a detector may miss a repeat)."""
    known = [key.split("\x00", 1) for key in _table(state, namespace)["placeholders"]]
    known += [[kind, text[start:end]] for start, end, kind in taken]
    extra: list[tuple[int, int, str]] = []
    for kind, value in sorted(known, key=lambda kv: -len(kv[1])):
        if len(value) < min_length:
            continue
        at = text.find(value)
        while at >= 0:
            end = at + len(value)
            if not any(s < end and at < e for s, e, _ in taken + extra):
                extra.append((at, end, kind))
            at = text.find(value, end)
    return extra


def replace_spans(
    text: str,
    spans: Iterable[tuple[int, int, str]],
    state: dict[str, Any],
    namespace: str,
    repeats_from: int | None = None,
) -> str:
    """``text`` with each ``(start, end, type)`` span (non-overlapping) replaced by its placeholder. With
    ``repeats_from``, every other occurrence of a value (this text's or one replaced earlier in the request) at
    least that long is replaced too."""
    spans = list(spans)
    if repeats_from is not None:
        spans += _known_occurrences(text, spans, state, namespace, repeats_from)
    parts: list[str] = []
    last = 0
    for start, end, kind in sorted(spans):
        if start < last:
            continue
        parts += [text[last:start], placeholder_for(kind, text[start:end], state, namespace, avoid=text)]
        last = end
    parts.append(text[last:])
    return "".join(parts)


def restore(text: str, state: dict[str, Any], namespace: str) -> str:
    values: dict[str, str] = state.get(namespace, {}).get("values", {})
    if not values or "[" not in text:
        return text

    def back(match: re.Match[str]) -> str:
        canonical = f"[{match.group(1).upper()}_{int(match.group(2))}]"
        return values.get(canonical, match.group())

    return _PLACEHOLDER.sub(back, text)
