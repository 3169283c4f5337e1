"""Anthropic's Messages API behind the OpenAI chat completions shape, streaming included.

The translation is pure functions (``to_messages_request``, ``to_chat_completion``) and a small state
machine (``ChunkTranslator``) fed by an incremental SSE parser (``SSEParser``); the provider only moves
bytes. OpenAI fields with no Messages counterpart (``response_format``, ``logprobs``, ``seed``, ...) are
dropped; ones that would change the answer's meaning if dropped (``n`` > 1, audio or file parts) are
refused with a 400.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from aiguardian.gateway.deployments import Deployment
from aiguardian.gateway.providers.base import RETRYABLE_STATUSES, UpstreamError, parse_retry_after
from aiguardian.gateway.providers.http import UpstreamHTTP, json_object

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# The status an ``error`` event stands for: the stream is already 200 by then.
_ERROR_EVENT_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _rejected(message: str) -> UpstreamError:
    """A request this provider cannot express: the client's to fix, so no retry."""
    return UpstreamError(400, message, retryable=False, error_type="invalid_request_error")


# --- request --------------------------------------------------------------------------------------------


def _text_of(content: Any, role: str) -> str:
    """Content that Anthropic only takes as text (system prompts): a string or OpenAI text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _rejected(f"{role} messages may only hold text parts")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise _rejected(f"the content of a {role} message must be a string or a list of parts")


def image_block(url: str) -> dict[str, Any]:
    """An OpenAI ``image_url`` (a ``data:`` URL or a web address) as an Anthropic image block."""
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise _rejected("image data URLs must look like data:<media type>;base64,<data>")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _rejected("image_url must be a data: URL or an http(s) URL")


def _content_blocks(content: Any, role: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise _rejected(f"the content of a {role} message must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = str(part.get("text", ""))
            if text:  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                raise _rejected("an image_url part needs a url")
            blocks.append(image_block(url))
        else:
            raise _rejected(f"the anthropic provider does not take `{kind}` content parts")
    return blocks


def _tool_use_block(call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not function.get("name"):
        raise _rejected("a tool call needs a function name")
    arguments = function.get("arguments") or "{}"
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise _rejected(f"the arguments of tool call {call.get('id')} are not JSON") from None
    if not isinstance(parsed, dict):
        raise _rejected(f"the arguments of tool call {call.get('id')} must be a JSON object")
    return {"type": "tool_use", "id": str(call.get("id") or ""), "name": function["name"], "input": parsed}


def _tool_result_block(message: dict[str, Any]) -> dict[str, Any]:
    if not message.get("tool_call_id"):
        raise _rejected("a tool message needs a tool_call_id")
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": str(message["tool_call_id"])}
    if isinstance(content, list):
        block["content"] = _content_blocks(content, "tool")
    elif content:
        block["content"] = str(content)
    return block


def _tool(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type", "function") != "function"
        or not isinstance(function, dict)
    ):
        raise _rejected("the anthropic provider only takes function tools")
    out: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise _rejected("tool_choice must be auto, none, required or a named function")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # auto is Anthropic's default too
    return out


def to_messages_request(payload: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat completions request as an Anthropic Messages request."""
    if payload.get("n") not in (None, 1):
        raise _rejected("the anthropic provider answers one choice at a time (n must be 1)")
    system: list[str] = []
    messages: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        # Anthropic wants turns to alternate; consecutive same-role turns (tool results, then the user's
        # next words) become one turn, tool results first as the API requires.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    for message in payload.get("messages") or []:
        if not isinstance(message, dict):
            raise _rejected("every message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            text = _text_of(message.get("content"), str(role))
            if text:
                system.append(text)
        elif role == "user":
            add("user", _content_blocks(message.get("content"), "user"))
        elif role == "assistant":
            blocks = _content_blocks(message.get("content"), "assistant")
            blocks += [_tool_use_block(call) for call in message.get("tool_calls") or []]
            add("assistant", blocks)
        elif role == "tool":
            add("user", [_tool_result_block(message)])
        else:
            raise _rejected(f"the anthropic provider does not take `{role}` messages")

    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens") or DEFAULT_MAX_TOKENS
    request: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens, "messages": messages}
    if system:
        request["system"] = "\n\n".join(system)
    for name in ("temperature", "top_p"):
        if payload.get(name) is not None:
            request[name] = payload[name]
    stop = payload.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = payload.get("tools")
    if tools:
        request["tools"] = [_tool(tool) for tool in tools]
        choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    if isinstance(payload.get("user"), str):
        request["metadata"] = {"user_id": payload["user"]}
    if payload.get("stream"):
        request["stream"] = True
    return request


# --- response -------------------------------------------------------------------------------------------


def to_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic counts cached prompt tokens apart from ``input_tokens``; OpenAI counts them in."""
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + int(usage.get("cache_creation_input_tokens") or 0) + cached
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id"),
        "type": "function",
        "function": {"name": block.get("name"), "arguments": orjson.dumps(block.get("input") or {}).decode()},
    }


def to_chat_completion(message: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages response as an OpenAI ``chat.completion``."""
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    texts = [str(b.get("text", "")) for b in blocks if b.get("type") == "text"]
    calls = [_tool_call(b) for b in blocks if b.get("type") == "tool_use"]
    answer: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        answer["tool_calls"] = calls
    return {
        "id": f"chatcmpl-{message.get('id', '')}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer,
                "finish_reason": FINISH_REASONS.get(str(message.get("stop_reason")), "stop"),
            }
        ],
        "usage": to_usage(message.get("usage") or {}),
    }


# --- streaming ------------------------------------------------------------------------------------------


@dataclass
class SSEEvent:
    event: str
    data: str


class SSEParser:
    """Server-sent events from bytes as they come off the network: a line, or an event, may be split
    across any number of chunks."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            line = self._buffer[:end].rstrip(b"\r").decode()
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data or self._event:
                    events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
            # comments (":...") and other fields (id, retry) carry nothing we use


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def error_from_event(data: dict[str, Any]) -> UpstreamError:
    error = data.get("error")
    if not isinstance(error, dict):
        error = {}
    kind = str(error.get("type") or "api_error")
    status = _ERROR_EVENT_STATUS.get(kind, 502)
    message = str(error.get("message") or kind)[:500]
    return UpstreamError(status, message, retryable=status in RETRYABLE_STATUSES, error_type=kind)


@dataclass
class ChunkTranslator:
    """Anthropic stream events in, OpenAI ``chat.completion.chunk`` SSE bytes out."""

    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = "chatcmpl-anthropic"
    usage: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"
    done: bool = False
    _tools: dict[int, int] = field(default_factory=dict)  # content block index -> tool_calls index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )

    def feed(self, event: str, data: dict[str, Any]) -> list[bytes]:
        kind = data.get("type", event)
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = f"chatcmpl-{message.get('id', '')}"
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "message_delta":
            stop_reason = (data.get("delta") or {}).get("stop_reason")
            if stop_reason:
                self.finish_reason = FINISH_REASONS.get(stop_reason, "stop")
            # message_delta's counts are cumulative: they replace, not add to, what message_start said
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            return []
        if kind == "message_stop":
            self.done = True
            usage_chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": to_usage(self.usage),
            }
            return [self._chunk({}, self.finish_reason), _sse(usage_chunk), b"data: [DONE]\n\n"]
        if kind == "error":
            raise error_from_event(data)
        return []  # ping, content_block_stop, and event types added after this was written

    def _block_start(self, index: int, block: dict[str, Any]) -> list[bytes]:
        if block.get("type") == "text":
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if block.get("type") == "tool_use":
            position = self._tools[index] = len(self._tools)
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and server tool blocks have no OpenAI counterpart

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[bytes]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and index in self._tools:
            call = {"index": self._tools[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []


# --- transport ------------------------------------------------------------------------------------------


def _headers(deployment: Deployment) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "anthropic-version": API_VERSION}
    if deployment.api_key:
        headers["x-api-key"] = deployment.api_key
    return headers


async def error_from_response(response: aiohttp.ClientResponse) -> UpstreamError:
    raw = await response.read()
    message, kind = f"upstream answered {response.status}", "upstream_error"
    try:
        detail = orjson.loads(raw).get("error")
        if isinstance(detail, dict):
            message = str(detail.get("message") or message)[:500]
            kind = str(detail.get("type") or kind)
    except (orjson.JSONDecodeError, AttributeError):
        pass
    return UpstreamError(
        response.status,
        message,
        retryable=response.status in RETRYABLE_STATUSES,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        error_type=kind,
    )


def _malformed() -> UpstreamError:
    return UpstreamError(502, "the upstream answered malformed JSON", retryable=True)


class AnthropicProvider:
    def __init__(self) -> None:
        self._http = UpstreamHTTP(error_from_response)

    async def chat(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        body = orjson.dumps(to_messages_request({**payload, "stream": False}, deployment.upstream_model))
        message = json_object(await self._http.post(deployment, "/v1/messages", body, _headers(deployment)))
        if not isinstance(message.get("content"), list):
            raise UpstreamError(502, "the upstream answered an unexpected shape", retryable=True)
        return to_chat_completion(message, deployment.model)

    async def stream_chat(self, deployment: Deployment, payload: dict[str, Any]) -> AsyncIterator[bytes]:
        body = orjson.dumps(to_messages_request({**payload, "stream": True}, deployment.upstream_model))
        parser = SSEParser()
        translator = ChunkTranslator(deployment.model)
        headers = {**_headers(deployment), "Accept": "text/event-stream"}
        async with contextlib.aclosing(
            self._http.stream(deployment, "/v1/messages", body, headers)
        ) as chunks:
            async for chunk in chunks:
                for event in parser.feed(chunk):
                    try:
                        data = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise _malformed() from None
                    if not isinstance(data, dict):
                        raise _malformed()
                    for out in translator.feed(event.event, data):
                        yield out
                if translator.done:
                    return
        raise UpstreamError(502, "the upstream stream ended before message_stop", retryable=True)

    async def embeddings(self, deployment: Deployment, payload: dict[str, Any]) -> dict[str, Any]:
        raise UpstreamError(400, "anthropic has no embeddings endpoint", retryable=False)

    async def close(self) -> None:
        await self._http.close()
