"""A fake Anthropic Messages API: a real aiohttp server on loopback, for the ``anthropic`` provider's tests.

It checks requests as strictly as the real API does on the points a translation can get wrong (turns
alternate, tool results answer the previous turn's tool uses, no empty text, no unknown fields, sampling
ranges) and answers 400 ``invalid_request_error`` otherwise. Its answers are deterministic:

- the last user turn holds tool results: ``The tool said: <their text>``;
- tools are offered (and ``tool_choice`` is not none): a ``tool_use`` of the chosen (or first) tool with
  ``tool_input`` as its input, after a short text when the choice is ``auto``;
- otherwise ``Echo: <the last user text>``, plus ``[N images]`` when the turn held images.

``stop_sequences`` and ``max_tokens`` (counted in words) cut the text and set ``stop_reason``. Every
request is recorded; ``fail_next`` queues faults for the next requests.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

FAULTS = ("400", "429", "500", "529", "malformed", "error_event")

_ALLOWED_FIELDS = {
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
}
_MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class Invalid(Exception):
    pass


@dataclass
class Recorded:
    headers: dict[str, str]
    body: dict[str, Any]


def _check_blocks(role: str, content: Any, previous_tool_uses: set[str]) -> set[str]:
    """Validate one turn's content; return the ids of the tool uses it makes."""
    if isinstance(content, str):
        if not content:
            raise Invalid("messages: text content blocks must be non-empty")
        return set()
    if not isinstance(content, list) or not content:
        raise Invalid("messages: content must be a non-empty string or list")
    uses: set[str] = set()
    seen_other = False
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str) or not block["text"]:
                raise Invalid("messages: text content blocks must be non-empty")
            seen_other = True
        elif kind == "image":
            source = block.get("source") or {}
            if source.get("type") == "base64":
                if source.get("media_type") not in _MEDIA_TYPES or not source.get("data"):
                    raise Invalid("messages: image source: bad base64 image")
            elif source.get("type") != "url" or not str(source.get("url", "")).startswith("http"):
                raise Invalid("messages: image source: unknown type")
            seen_other = True
        elif kind == "tool_use":
            if role != "assistant":
                raise Invalid("messages: tool_use blocks may only be in assistant turns")
            if not block.get("id") or not block.get("name") or not isinstance(block.get("input"), dict):
                raise Invalid("messages: tool_use needs id, name and an input object")
            uses.add(block["id"])
            seen_other = True
        elif kind == "tool_result":
            if role != "user":
                raise Invalid("messages: tool_result blocks may only be in user turns")
            if seen_other:
                raise Invalid("messages: tool_result blocks must come first in their turn")
            if block.get("tool_use_id") not in previous_tool_uses:
                raise Invalid("messages: tool_result answers no tool_use of the previous turn")
        else:
            raise Invalid(f"messages: unknown content block type {kind!r}")
    return uses


def validate(body: Any) -> None:
    if not isinstance(body, dict):
        raise Invalid("the body must be a JSON object")
    extra = set(body) - _ALLOWED_FIELDS
    if extra:
        raise Invalid(f"{sorted(extra)[0]}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise Invalid("model: Field required")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        raise Invalid("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise Invalid("system: must be a string or a list of text blocks")
    previous_role: str | None = None
    previous_uses: set[str] = set()
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Invalid(f"messages: unexpected role {role!r}")
        if role == previous_role:
            raise Invalid("messages: roles must alternate between user and assistant")
        previous_uses = _check_blocks(role, message.get("content"), previous_uses)
        previous_role = role
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not 0 <= value <= 1:
            raise Invalid(f"{name}: range: 0..1")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: must be a list of strings")
    tools = body.get("tools") or []
    for tool in tools:
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            raise Invalid("tools: each tool needs a name and an input_schema")
        if set(tool) - {"name", "description", "input_schema"}:
            raise Invalid("tools: Extra inputs are not permitted")
    choice = body.get("tool_choice")
    if choice is not None:
        if choice.get("type") not in ("auto", "any", "tool", "none"):
            raise Invalid("tool_choice: unknown type")
        if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in tools}:
            raise Invalid("tool_choice: no such tool")


def _words(text: str) -> int:
    return len(text.split())


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text(block.get("content")))
    return " ".join(p for p in parts if p)


class FakeAnthropic:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.tool_input: dict[str, Any] = {"city": "Paris", "unit": "celsius"}
        self.retry_after = "7"
        self._faults: deque[str] = deque()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def fail_next(self, *faults: str) -> None:
        """Answer the next requests with these faults, one each, in order."""
        for fault in faults:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; one of {FAULTS}")
        self._faults.extend(faults)

    async def start(self) -> FakeAnthropic:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- HTTP ---------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        body = {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}
        return web.json_response(body, status=status, headers=headers)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(Recorded(dict(request.headers), body if isinstance(body, dict) else {}))
        fault = self._faults.popleft() if self._faults else None
        if fault in ("400", "500", "529"):
            return self._error(int(fault), f"fault {fault}")
        if fault == "429":
            return self._error(429, "rate limited", headers={"Retry-After": self.retry_after})
        if not request.headers.get("x-api-key"):
            return self._error(401, "x-api-key header is required")
        if request.headers.get("anthropic-version") != "2023-06-01":
            return self._error(400, "anthropic-version header is required")
        try:
            validate(body)
        except Invalid as exc:
            return self._error(400, str(exc))
        assert isinstance(body, dict)
        message = self._answer(body)
        if body.get("stream"):
            return await self._stream(request, message, fault)
        if fault == "malformed":
            return web.Response(body=b'{"id": "msg_', content_type="application/json")
        return web.json_response(message)

    # --- the answer ---------------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        content = last["content"] if isinstance(last["content"], list) else [last["content"]]
        blocks = [b for b in content if isinstance(b, dict)]
        tools = body.get("tools") or []
        choice = body.get("tool_choice") or {"type": "auto"}
        out: list[dict[str, Any]] = []
        stop_reason, stop_sequence = "end_turn", None
        if any(b.get("type") == "tool_result" for b in blocks):
            text = "The tool said: " + _text([b for b in blocks if b.get("type") == "tool_result"])
        elif tools and choice["type"] != "none":
            name = choice.get("name") if choice["type"] == "tool" else tools[0]["name"]
            if choice["type"] == "auto":
                out.append({"type": "text", "text": "Let me check."})
            use = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": name}
            out.append({**use, "input": self.tool_input})
            text, stop_reason = "", "tool_use"
        else:
            images = sum(1 for b in blocks if b.get("type") == "image")
            text = "Echo: " + _text(last["content"]) + (f" [{images} images]" if images else "")
        if text:
            for stop in body.get("stop_sequences") or []:
                if stop in text:
                    text, stop_reason, stop_sequence = text[: text.index(stop)], "stop_sequence", stop
                    break
            words = text.split(" ")
            if len(words) > body["max_tokens"]:
                text, stop_reason = " ".join(words[: body["max_tokens"]]), "max_tokens"
            out.append({"type": "text", "text": text})
        prompt = _words(body["system"] if isinstance(body.get("system"), str) else "")
        prompt += sum(_words(_text(m["content"])) for m in body["messages"])
        completion = sum(_words(b.get("text", "")) + len(b.get("input", {})) for b in out)
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": out,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }

    async def _stream(
        self, request: web.Request, message: dict[str, Any], fault: str | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        async def send(event: str, data: dict[str, Any] | str) -> None:
            raw = f"event: {event}\ndata: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()
            # Two writes with a pause between: the provider must put events split across reads together.
            half = len(raw) // 2
            await response.write(raw[:half])
            await asyncio.sleep(0.001)
            await response.write(raw[half:])

        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {"input_tokens": message["usage"]["input_tokens"], "output_tokens": 1}
        await send("message_start", {"type": "message_start", "message": start})
        await send("ping", {"type": "ping"})
        if fault == "malformed":
            await send("content_block_delta", "{not json")
            return response
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                opening: dict[str, Any] = {"type": "text", "text": ""}
                pieces = [w + " " for w in block["text"].split(" ")]
                pieces[-1] = pieces[-1][:-1]
                deltas = [{"type": "text_delta", "text": p} for p in pieces if p]
            else:
                opening = {**block, "input": {}}
                encoded = json.dumps(block["input"])
                third = max(1, len(encoded) // 3)
                fragments = ["", *[encoded[i : i + third] for i in range(0, len(encoded), third)]]
                deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
            await send(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
            for number, delta in enumerate(deltas):
                await send(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                )
                if fault == "error_event" and number == 1:
                    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                    await send("error", error)
                    return response
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        await send(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        )
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response
