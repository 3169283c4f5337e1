from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from aiguardian.conversations import chat, service
from aiguardian.conversations.schemas import (
    SEARCH_MAX,
    ChatOut,
    ChatRequest,
    ConversationCreate,
    ConversationExport,
    ConversationOut,
    ConversationPage,
    ConversationRename,
    ConversationWithMessages,
    MessagePage,
    SearchPage,
)
from aiguardian.conversations.service import Viewer
from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.errors import AIGError
from aiguardian.core.http import RequestId, audit
from aiguardian.core.runtime import RuntimeDep
from aiguardian.gateway.routes import SettlingStreamingResponse
from aiguardian.guards.pipeline import GuardBlocked
from aiguardian.identity.auth import Reader, Writer, check_model, require_scope
from aiguardian.identity.service import Principal

router = APIRouter(prefix="/api/v1/conversations", tags=["conversations"])
chat_router = APIRouter(prefix="/api/v1", tags=["conversations"])

Chatter = Annotated[Principal, Depends(require_scope("chat"))]

ConversationId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
UserFilter = Annotated[
    str | None,
    Query(max_length=32, pattern=r"^[A-Za-z0-9_-]+$", description="Admins: another user's conversations."),
]
AllUsers = Annotated[bool, Query(description="Admins: every user's conversations.")]
Limit = Annotated[int, Query(ge=1, le=100)]
MessageLimit = Annotated[int, Query(ge=1, le=500)]
Cursor = Annotated[str | None, Query(max_length=200)]


def _viewer(principal: Principal) -> Viewer:
    # An admin reads other users' conversations only with the admin scope, as for every admin right.
    return Viewer(principal.user_id, is_auditor=principal.is_admin and "admin" in principal.scopes)


@router.post("", status_code=201, response_model=Envelope[ConversationOut])
async def create_conversation(
    body: ConversationCreate, request: Request, principal: Writer, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[ConversationOut]:
    check_model(principal, body.model)
    conversation = await service.create_conversation(runtime.db, _viewer(principal), body)
    audit(request, "conversation.create", conversation.id)
    return ok(conversation, request_id)


@router.get("", response_model=Envelope[ConversationPage])
async def list_conversations(
    principal: Reader,
    runtime: RuntimeDep,
    request_id: RequestId,
    user_id: UserFilter = None,
    all_users: AllUsers = False,
    q: Annotated[str | None, Query(max_length=SEARCH_MAX, description="Part of the title.")] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Envelope[ConversationPage]:
    page = await service.list_conversations(
        runtime.db, _viewer(principal), user_id=user_id, all_users=all_users, q=q, limit=limit, cursor=cursor
    )
    return ok(page, request_id)


@router.get("/search", response_model=Envelope[SearchPage])
async def search_messages(
    principal: Reader,
    runtime: RuntimeDep,
    request_id: RequestId,
    q: Annotated[str, Query(min_length=1, max_length=SEARCH_MAX, description="Every word must match.")],
    user_id: UserFilter = None,
    all_users: AllUsers = False,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Envelope[SearchPage]:
    page = await service.search_messages(
        runtime.db, _viewer(principal), q, user_id=user_id, all_users=all_users, limit=limit, cursor=cursor
    )
    return ok(page, request_id)


@router.get("/{conversation_id}", response_model=Envelope[ConversationWithMessages])
async def get_conversation(
    conversation_id: ConversationId,
    request: Request,
    principal: Reader,
    runtime: RuntimeDep,
    request_id: RequestId,
    limit: MessageLimit = 100,
) -> Envelope[ConversationWithMessages]:
    audit(request, "conversation.read", conversation_id)
    found = await service.get_conversation(runtime.db, _viewer(principal), conversation_id, limit=limit)
    return ok(found, request_id)


@router.get("/{conversation_id}/messages", response_model=Envelope[MessagePage])
async def list_messages(
    conversation_id: ConversationId,
    request: Request,
    principal: Reader,
    runtime: RuntimeDep,
    request_id: RequestId,
    limit: MessageLimit = 100,
    cursor: Cursor = None,
) -> Envelope[MessagePage]:
    audit(request, "conversation.read", conversation_id)
    page = await service.list_messages(
        runtime.db, _viewer(principal), conversation_id, limit=limit, cursor=cursor
    )
    return ok(page, request_id)


@router.patch("/{conversation_id}", response_model=Envelope[ConversationOut])
async def rename_conversation(
    conversation_id: ConversationId,
    body: ConversationRename,
    request: Request,
    principal: Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
) -> Envelope[ConversationOut]:
    audit(request, "conversation.rename", conversation_id)
    renamed = await service.rename_conversation(runtime.db, _viewer(principal), conversation_id, body.title)
    return ok(renamed, request_id)


@router.delete("/{conversation_id}", response_model=Envelope[dict[str, bool]])
async def delete_conversation(
    conversation_id: ConversationId,
    request: Request,
    principal: Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
) -> Envelope[dict[str, bool]]:
    audit(request, "conversation.delete", conversation_id)
    await service.delete_conversation(runtime.db, _viewer(principal), conversation_id)
    return ok({"deleted": True}, request_id)


@router.get(
    "/{conversation_id}/export",
    response_model=Envelope[ConversationExport],
    responses={200: {"content": {"text/markdown": {}}, "description": "The envelope, or Markdown."}},
)
async def export_conversation(
    conversation_id: ConversationId,
    request: Request,
    principal: Reader,
    runtime: RuntimeDep,
    request_id: RequestId,
    format: Literal["json", "markdown"] = "json",
) -> Envelope[ConversationExport] | Response:
    audit(request, "conversation.export", conversation_id)
    export = await service.export_conversation(runtime.db, _viewer(principal), conversation_id)
    if format == "markdown":
        return Response(
            service.to_markdown(export),
            media_type="text/markdown; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="conversation-{conversation_id}.md"'},
        )
    return ok(export, request_id)


def _sse(event: str, data: object) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


@chat_router.post(
    "/chat",
    response_model=Envelope[ChatOut],
    responses={200: {"content": {"text/event-stream": {}}, "description": "With stream: true, SSE."}},
)
async def chat_turn(
    body: ChatRequest, request: Request, principal: Chatter, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[ChatOut] | Response:
    if body.model is not None:
        check_model(principal, body.model)
    pipeline = chat.Pipeline.of(request, runtime)
    if not body.stream:
        result = await chat.chat(pipeline, request, principal, body)
        audit(request, "conversation.chat", result.conversation_id)
        return ok(chat.chat_out(result), request_id)

    # What refuses the turn before its first token (404, drift block, input guards, budget) is an ordinary
    # error answer; after that, the upstream's tokens are passed on as they arrive.
    turn = await chat.start_stream(pipeline, request, principal, body)
    audit(request, "conversation.chat", turn.conversation_id)

    async def events() -> AsyncIterator[bytes]:
        try:
            async for frame in turn.frames():
                if frame["type"] == "chat.delta":
                    yield _sse(
                        "delta", {"conversation_id": frame["conversation_id"], "content": frame["content"]}
                    )
                else:
                    yield _sse("done", frame["data"])
        except GuardBlocked as blocked:
            request.state.reason_codes = blocked.reason_codes
            yield _sse("error", blocked.openai_body(request.state.request_id)["error"])
        except AIGError as error:
            yield _sse("error", {"code": error.reason_code.value, "message": error.message})
        finally:
            with anyio.CancelScope(shield=True):
                await turn.aclose()

    return SettlingStreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}, on_close=turn.aclose
    )
