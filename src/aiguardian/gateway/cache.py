"""The answer cache: an identical chat request is answered from the cache, with no upstream call and no cost.

Exact match. The key is a SHA-256 of the request body in canonical JSON, minus the fields that do not
change the answer (``stream``, ``stream_options``, ``user``): the model, messages, tools, temperature and
every other field are in it, so a request for one model never gets another model's answer. Only an answer
from a deployment of the model asked for is stored (never a fallback model's), and only a complete one.

Scope: with ``AIG_GATEWAY_CACHE_SCOPE=user`` (the default) a user's keys share entries and different users
never do, so a hit tells nobody what someone else asked; ``global`` shares them among every caller.

Opt in per model (a deployment with ``cache: true``) or per request (``X-AIG-Cache: use``; ``skip`` opts
out). ``Cache-Control: no-cache`` asks for a fresh answer (which is then stored), ``no-store`` keeps the
answer out of the cache. Entries live ``AIG_CACHE_TTL`` seconds in the tiered cache (memory, or Redis
shared by every process).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from aiguardian.core.cache import CacheBackend, describe_error
from aiguardian.gateway.deployments import Deployment

log = structlog.get_logger("aiguardian.gateway")

_NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})
_EVENT = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class CachePlan:
    """What the cache does for one request: its key, whether to look it up, whether to store the answer."""

    key: str | None = None
    lookup: bool = False
    store: bool = False

    @property
    def label(self) -> str:
        """``X-AIG-Cache`` when the answer does not come from the cache."""
        return "miss" if self.key else "off"


NO_CACHE = CachePlan()


@dataclass(frozen=True)
class CachedAnswer:
    body: dict[str, Any]
    provider: str
    upstream_model: str

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.body.get("usage")
        return usage if isinstance(usage, dict) else None


def answer_key(payload: dict[str, Any], scope_id: str) -> str | None:
    shaping = {name: value for name, value in payload.items() if name not in _NOT_IN_KEY}
    try:
        canonical = orjson.dumps(shaping, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # say, an integer beyond 64 bits: such a request is not cached
        return None
    return f"answer:v1:{scope_id}:{hashlib.sha256(canonical).hexdigest()}"


def complete(body: dict[str, Any]) -> bool:
    choices = body.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
    )


class AnswerCache:
    def __init__(self, store: CacheBackend, *, ttl: float, scope: str) -> None:
        self.store = store
        self.ttl = ttl
        self.scope = scope

    def plan(
        self,
        payload: dict[str, Any],
        *,
        user_id: str,
        default: bool,
        asked: str | None,
        cache_control: str | None,
    ) -> CachePlan:
        wish = (asked or "").strip().lower()
        if wish == "skip" or (wish != "use" and not default):
            return NO_CACHE
        directives = {part.strip().lower() for part in (cache_control or "").split(",")}
        lookup, store = "no-cache" not in directives, "no-store" not in directives
        key = answer_key(payload, "*" if self.scope == "global" else f"user:{user_id}")
        if key is None or not (lookup or store):
            return NO_CACHE
        return CachePlan(key, lookup, store)

    async def get(self, plan: CachePlan) -> CachedAnswer | None:
        if not plan.lookup or plan.key is None:
            return None
        try:
            raw = await self.store.get(plan.key)
            return None if raw is None else CachedAnswer(**orjson.loads(raw))
        except Exception as exc:  # the cache never fails a request: a broken entry is a miss
            log.warning("answer cache read failed", error=describe_error(exc))
            return None

    async def put(
        self, plan: CachePlan, body: dict[str, Any] | None, deployment: Deployment, model: str
    ) -> None:
        if not plan.store or plan.key is None or body is None or deployment.model != model:
            return
        if not complete(body):
            return
        entry = {"body": body, "provider": deployment.provider, "upstream_model": deployment.upstream_model}
        try:
            await self.store.set(plan.key, orjson.dumps(entry), ttl=self.ttl)
        except Exception as exc:
            log.warning("answer cache write failed", error=describe_error(exc))


def assemble(chunks: list[bytes], usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``chat.completion`` a finished stream amounts to, to store it; None when the stream carried
    anything but plain text (tool calls, log probabilities, ...), which is then not cached."""
    head: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    for event in _EVENT.split(b"".join(chunks)):
        event = event.strip()
        if not event.startswith(b"data:") or event[5:].strip() == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(event[5:])
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict):
            return None
        head = head or chunk
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if choice.get("logprobs") is not None or any(
                value is not None for name, value in delta.items() if name not in ("role", "content")
            ):
                return None
            into = choices.setdefault(choice.get("index", 0), {"role": "assistant", "content": []})
            into["role"] = delta.get("role") or into["role"]
            if isinstance(delta.get("content"), str):
                into["content"].append(delta["content"])
            into["finish_reason"] = choice.get("finish_reason") or into.get("finish_reason")
    if head is None or not choices:
        return None
    body = {
        "id": head.get("id"),
        "object": "chat.completion",
        "created": head.get("created"),
        "model": head.get("model"),
        "choices": [
            {
                "index": index,
                "message": {"role": c["role"], "content": "".join(c["content"])},
                "logprobs": None,
                "finish_reason": c.get("finish_reason"),
            }
            for index, c in sorted(choices.items())
        ],
        "usage": usage,
    }
    if head.get("system_fingerprint"):
        body["system_fingerprint"] = head["system_fingerprint"]
    return body


def replay(body: dict[str, Any], include_usage: bool) -> bytes:
    """A cached ``chat.completion`` as the server-sent events a stream of it would have been."""
    base = {
        "id": body.get("id"),
        "object": "chat.completion.chunk",
        "created": body.get("created"),
        "model": body.get("model"),
    }
    if body.get("system_fingerprint"):
        base["system_fingerprint"] = body["system_fingerprint"]
    choices = [c for c in body.get("choices") or [] if isinstance(c, dict)]
    chunks: list[dict[str, Any]] = []
    for choice in choices:
        message = dict(choice.get("message") or {})
        if isinstance(message.get("tool_calls"), list):
            message["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        delta = {name: value for name, value in message.items() if value is not None}
        chunks.append({**base, "choices": [{"index": choice.get("index", 0), "delta": delta}]})
    finish = [
        {"index": c.get("index", 0), "delta": {}, "finish_reason": c.get("finish_reason")} for c in choices
    ]
    chunks.append({**base, "choices": finish})
    if include_usage and isinstance(body.get("usage"), dict):
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + b"data: [DONE]\n\n"
