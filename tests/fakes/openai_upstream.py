"""A fake OpenAI-compatible provider: a real aiohttp server on 127.0.0.1 that the gateway calls over TCP.

It answers ``POST /v1/chat/completions`` (JSON or server-sent events), ``POST /v1/embeddings`` and
``GET /v1/models`` the way OpenAI does, records every request, and misbehaves on demand. Queue what the next
requests get with :meth:`OpenAIUpstream.script` (``"ok"`` when nothing is queued)::

    upstream.script("500", "429:2", "ok")           # any model
    upstream.script("503", model="gpt-primary")     # only requests for this upstream model

Steps: ``ok``; ``<status>`` (an OpenAI error body with that status); ``429:<s>`` (with ``Retry-After: s``);
``hang:<s>`` (sleep ``s`` seconds, then answer; longer than a deployment's timeout it is a timeout);
``malformed`` (200 with a body that is not JSON); ``cut:<k>`` (the connection closes after ``k`` stream
events, or halfway through a JSON body); ``slow:<s>`` (a stream of one event every ``s`` seconds for up to
30 s, recording whether the client went away); ``fragmented`` (a stream whose every event arrives in two
TCP writes, split inside its JSON); ``empty`` (200 with an empty body). A 401 or 403 quotes the key it got,
as some providers do.

Run it in the test's event loop (``async with OpenAIUpstream() as upstream``) or, for a server in another
process, in a thread of its own (``with OpenAIUpstream().in_thread() as upstream``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

SLOW_STREAM_SECONDS = 30.0
DEFAULT_MODELS = ("gpt-fake",)


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    step: str = "ok"


@dataclass(frozen=True)
class Step:
    text: str
    kind: str
    status: int = 200
    seconds: float = 0.0
    count: int = 0


def parse_step(text: str) -> Step:
    kind, _, arg = text.partition(":")
    if kind == "ok":
        return Step(text, "ok")
    if kind == "malformed":
        return Step(text, "malformed")
    if kind in ("fragmented", "empty"):
        return Step(text, kind)
    if kind == "hang":
        return Step(text, "hang", seconds=float(arg or 30))
    if kind == "slow":
        return Step(text, "slow", seconds=float(arg or 0.1))
    if kind == "cut":
        return Step(text, "cut", count=int(arg or 2))
    if kind.isdigit():
        return Step(text, "status", status=int(kind), seconds=float(arg) if arg else 0.0)
    raise ValueError(f"unknown fake upstream step {text!r}")


@dataclass
class _Queues:
    any_model: deque[Step] = field(default_factory=deque)
    by_model: dict[str, deque[Step]] = field(default_factory=dict)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def reply_text(body: dict[str, Any]) -> str:
    return f"fake reply to: {last_user_text(body)}"


def _usage(body: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) + 1 for m in body.get("messages") or [])
    done = len(completion.split())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _tool_call(body: dict[str, Any]) -> dict[str, Any]:
    name = str(body["tools"][0]["function"]["name"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = str(choice["function"].get("name", name))
    arguments = orjson.dumps({"echo": last_user_text(body)}).decode()
    return {"id": "call_fake_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def _content(body: dict[str, Any]) -> str:
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        return orjson.dumps({"echo": last_user_text(body)}).decode()
    return reply_text(body)


def completion(body: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
    if body.get("tools"):
        message["tool_calls"] = [_tool_call(body)]
        finish, text = "tool_calls", ""
    else:
        text = _content(body)
        message["content"] = text
        finish = "stop"
    return {
        "id": f"chatcmpl-fake-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "system_fingerprint": "fp_fake",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _usage(body, text),
    }


def stream_events(body: dict[str, Any]) -> list[bytes]:
    """The server-sent events of a streamed answer, each ending in a blank line, ``[DONE]`` last."""
    ident = f"chatcmpl-fake-{uuid.uuid4().hex[:12]}"
    created = int(time.time())

    def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.get("model"),
            "system_fingerprint": "fp_fake",
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def delta(values: dict[str, Any], finish: str | None = None) -> bytes:
        return event([{"index": 0, "delta": values, "logprobs": None, "finish_reason": finish}])

    events = [delta({"role": "assistant", "content": ""})]
    if body.get("tools"):
        call = _tool_call(body)
        arguments = call["function"]["arguments"]
        head = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
        events.append(delta({"tool_calls": [{"index": 0, **head}]}))
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            events.append(delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
        events.append(delta({}, "tool_calls"))
        text = ""
    else:
        text = _content(body)
        events += [delta({"content": word + " "}) for word in text.split(" ")]
        events.append(delta({}, "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(event([], usage=_usage(body, text)))
    events.append(b"data: [DONE]\n\n")
    return events


def embedding_vector(text: str, dimensions: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [(digest[i % len(digest)] - 128) / 128 for i in range(dimensions)]


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class OpenAIUpstream:
    def __init__(self, models: tuple[str, ...] = DEFAULT_MODELS) -> None:
        self.models = models
        self.requests: list[Recorded] = []
        self.disconnected = threading.Event()  # a slow stream saw its client go away
        self.disconnected_after: float | None = None  # seconds into that stream
        self._queues = _Queues()
        self._always: Step | None = None
        self._sock = _free_socket()
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._runner: web.AppRunner | None = None

    # --- scripting ------------------------------------------------------------------------------------

    def script(self, *steps: str, model: str | None = None) -> None:
        """Queue what the next requests get, in order (for one upstream model, or any)."""
        parsed = [parse_step(s) for s in steps]
        if model is None:
            self._queues.any_model.extend(parsed)
        else:
            self._queues.by_model.setdefault(model, deque()).extend(parsed)

    def always(self, step: str | None) -> None:
        """What every request gets once its queue is empty (``None``: answer normally)."""
        self._always = parse_step(step) if step else None

    def reset(self) -> None:
        self.requests.clear()
        self._queues = _Queues()
        self._always = None
        self.disconnected.clear()
        self.disconnected_after = None

    def _next_step(self, model: Any) -> Step:
        queue = self._queues.by_model.get(model) if isinstance(model, str) else None
        for candidate in (queue, self._queues.any_model):
            if candidate:
                with contextlib.suppress(IndexError):
                    return candidate.popleft()
        return self._always or Step("ok", "ok")

    # --- what was received ----------------------------------------------------------------------------

    def calls(self, path: str = "/v1/chat/completions", model: str | None = None) -> list[Recorded]:
        return [
            r
            for r in list(self.requests)
            if r.path == path and (model is None or (r.body or {}).get("model") == model)
        ]

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    # --- handlers -------------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> Recorded:
        raw = await request.read()
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        recorded = Recorded(
            request.method,
            request.path,
            dict(request.headers),
            body if isinstance(body, dict) else None,
        )
        self.requests.append(recorded)
        return recorded

    async def _fault(self, step: Step, recorded: Recorded) -> web.StreamResponse | None:
        """The answer a failing step gives at once, or None to go on (after a hang, if any)."""
        if step.kind == "status" and step.status in (401, 403):
            # As some providers do: quote the key that was refused.
            presented = recorded.headers.get("Authorization", "").removeprefix("Bearer ")
            message = f"Incorrect API key provided: {presented}"
            return web.json_response(
                _error(message, "invalid_request_error", "invalid_api_key"), status=step.status
            )
        if step.kind == "status" and step.status == 429:
            headers = {"Retry-After": f"{step.seconds:g}"} if step.seconds else {}
            return web.json_response(
                _error("Rate limit reached (fake)", "requests", "rate_limit_exceeded"),
                status=429,
                headers=headers,
            )
        if step.kind == "status":
            kind = "invalid_request_error" if step.status < 500 else "server_error"
            return web.json_response(
                _error(f"fake upstream answered {step.status}", kind), status=step.status
            )
        if step.kind == "hang":
            await asyncio.sleep(step.seconds)
        if step.kind == "empty":
            return web.Response(body=b"", content_type="text/event-stream")
        if step.kind == "malformed":
            return web.Response(
                text='{"id": "chatcmpl-broken", "choices": [{', content_type="application/json"
            )
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        body = recorded.body
        if body is None:
            return web.json_response(_error("body is not JSON", "invalid_request_error"), status=400)
        step = self._next_step(body.get("model"))
        recorded.step = step.text
        answer = await self._fault(step, recorded)
        if answer is not None:
            return answer
        if body.get("stream"):
            return await self._stream(request, body, step)
        if step.kind == "cut":
            return await self._cut_json(request, orjson.dumps(completion(body)))
        return web.json_response(completion(body), dumps=lambda o: orjson.dumps(o).decode())

    async def _cut_json(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(raw)
        await response.prepare(request)
        await response.write(raw[: len(raw) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    async def _stream(self, request: web.Request, body: dict[str, Any], step: Step) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        events = stream_events(body)
        if step.kind == "cut":
            for event in events[: step.count]:
                await response.write(event)
            assert request.transport is not None
            request.transport.close()
            return response
        if step.kind == "slow":
            return await self._slow(response, events, step.seconds)
        for event in events:
            if step.kind == "fragmented":
                cut = event.find(b'"usage"')
                cut = cut + 4 if cut >= 0 else len(event) // 2
                await response.write(event[:cut])
                await asyncio.sleep(0.02)
                await response.write(event[cut:])
                await asyncio.sleep(0.02)
            else:
                await response.write(event)
        await response.write_eof()
        return response

    async def _slow(
        self, response: web.StreamResponse, events: list[bytes], interval: float
    ) -> web.StreamResponse:
        started = time.monotonic()
        head, repeated = events[0], events[1]
        try:
            await response.write(head)
            while time.monotonic() - started < SLOW_STREAM_SECONDS:
                await asyncio.sleep(interval)
                await response.write(repeated)
        except (asyncio.CancelledError, ConnectionError):
            self.disconnected_after = time.monotonic() - started
            self.disconnected.set()
            raise
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        recorded = await self._record(request)
        body = recorded.body
        if body is None:
            return web.json_response(_error("body is not JSON", "invalid_request_error"), status=400)
        step = self._next_step(body.get("model"))
        recorded.step = step.text
        answer = await self._fault(step, recorded)
        if answer is not None:
            return answer
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else [str(x) for x in inputs or []]
        dimensions = int(body.get("dimensions") or 8)
        data = []
        for index, text in enumerate(texts):
            vector = embedding_vector(text, dimensions)
            encoded: list[float] | str = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(t.split()) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        cards = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": cards})

    # --- running --------------------------------------------------------------------------------------

    async def start(self) -> OpenAIUpstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        # Cancelling a handler when its client goes away is how a slow stream notices the disconnect.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def in_thread(self) -> Iterator[OpenAIUpstream]:
        """Serve from a thread with its own event loop, for a server that runs in another process."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=run, name=f"fake-openai-{self.port}", daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake upstream did not start within 10 s")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    async def wait_disconnected(self, timeout: float) -> bool:
        """Wait (without blocking the event loop) until a slow stream saw its client go away."""
        deadline = time.monotonic() + timeout
        while not self.disconnected.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.disconnected.is_set()
