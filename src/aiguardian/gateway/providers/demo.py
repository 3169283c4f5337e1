"""The built-in offline model, so a fresh install answers at once. It calls nothing and says so."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from aiguardian.gateway.deployments import Deployment

PREFIX = "[AIGuardian demo model: no LLM was called] "


def _last_user_text(payload: dict[str, Any]) -> str:
    for message in reversed(payload.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _answer(payload: dict[str, Any]) -> str:
    said = " ".join(_last_user_text(payload).split())[:200]
    return PREFIX + (f"You said: {said}" if said else "Send a user message and I will echo it.")


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_words(payload: dict[str, Any]) -> int:
    total = 0
    for message in payload.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        total += _words(content) if isinstance(content, str) else 1
    return total


class DemoProvider:
    async def chat(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        text = _answer(payload)
        prompt, completion = _prompt_words(payload), _words(text)
        return {
            "id": f"chatcmpl-demo-{uuid.uuid4().hex[:16]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": deployment.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    async def stream_chat(self, deployment: Deployment, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        text = _answer(payload)
        ident = f"chatcmpl-demo-{uuid.uuid4().hex[:16]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            body = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": deployment.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(body) + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        for word in text.split(" "):
            yield chunk({"content": word + " "})
        yield chunk({}, "stop")
        prompt, completion = _prompt_words(payload), _words(text)
        usage = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": deployment.model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        yield b"data: " + orjson.dumps(usage) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def embeddings(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        inputs = payload.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(x) for x in inputs or []]
        as_base64 = payload.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(texts):
            digest = hashlib.sha256(text.encode()).digest()
            vector = [(b - 128) / 128 for b in digest[:16]]
            # The openai SDKs ask for base64 (little-endian float32) unless told otherwise.
            encoded: list[float] | str = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(_words(t) for t in texts)
        return {
            "object": "list",
            "data": data,
            "model": deployment.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def close(self) -> None:
        return None
