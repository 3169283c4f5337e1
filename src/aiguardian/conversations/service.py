"""Conversations: storage, reading under the privacy rules, export, search, and the history of a turn.

Knows no HTTP. A conversation is private to its owner; an admin (acting with the admin scope) may read any
of them, for audit, but only the owner changes or deletes one; to anyone else it does not exist (404).

A chat turn is :func:`chat_turn`: the history is built (:mod:`aiguardian.conversations.memory`), the
``complete`` function given by the caller answers it (the gateway pipeline, with its guards), and both
messages are stored together. Every stored message is published as a ``conversation.message`` event.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson
from sqlalchemy import ColumnElement, and_, delete, func, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aiguardian.conversations.memory import History, Turn, build_history, limit_of
from aiguardian.conversations.models import FTS_TABLE, Conversation, Message
from aiguardian.conversations.schemas import (
    ConversationCreate,
    ConversationExport,
    ConversationOut,
    ConversationPage,
    ConversationWithMessages,
    MessageOut,
    MessagePage,
    SearchHit,
    SearchPage,
)
from aiguardian.core import events
from aiguardian.core.bus import EventBus
from aiguardian.core.clock import iso, utc_now
from aiguardian.core.db import Database
from aiguardian.core.errors import Conflict, Forbidden, NotFound
from aiguardian.core.pagination import (
    bad_cursor,
    decode_cursor,
    decode_int_cursor,
    encode_cursor,
    escape_like,
)
from aiguardian.core.search import matching, search_words
from aiguardian.identity.service import Principal
from aiguardian.usage import tokens

PREVIEW_CHARS = 500
# The id the message being sent now takes in a history: newer than every stored one.
NEW_TURN_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks: a user, and whether they audit (read every conversation: an admin with the admin scope)."""

    user_id: str
    is_auditor: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``complete`` returns: the assistant's text and, if the guards said something, their verdict."""

    content: str
    verdict: dict[str, Any] | None = None


class Completer(Protocol):
    """Answers a chat payload (``{"model", "messages"}``, OpenAI's shape) for ``principal``."""

    async def __call__(self, principal: Principal, payload: dict[str, Any]) -> Answer: ...


@dataclass(frozen=True, slots=True)
class TurnResult:
    user: MessageOut
    assistant: MessageOut
    history: History


def conversation_out(conversation: Conversation) -> ConversationOut:
    return ConversationOut(
        id=conversation.id,
        owner_id=conversation.owner_id,
        title=conversation.title,
        model=conversation.model,
        system_prompt=conversation.system_prompt,
        purpose=conversation.purpose,
        summary=conversation.summary,
        summary_upto=conversation.summary_upto,
        created_at=iso(conversation.created_at),
        updated_at=iso(conversation.updated_at),
    )


def message_out(message: Message) -> MessageOut:
    return MessageOut(
        id=message.id,
        conversation_id=message.conversation_id,
        role=message.role,
        content=message.content,
        tokens=message.tokens,
        verdict=orjson.loads(message.verdict) if message.verdict else None,
        created_at=iso(message.created_at),
    )


# -- who sees what --------------------------------------------------------------------------------------------


def _owners(viewer: Viewer, user_id: str | None, all_users: bool) -> ColumnElement[bool]:
    """Whose conversations a listing covers: the viewer's own; an auditor may name a user, or everyone."""
    if (all_users or (user_id is not None and user_id != viewer.user_id)) and not viewer.is_auditor:
        raise Forbidden("only admins may read other users' conversations")
    if all_users:
        return true()
    return Conversation.owner_id == (user_id or viewer.user_id)


async def _readable(session: AsyncSession, viewer: Viewer, conversation_id: str) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None or not (viewer.is_auditor or conversation.owner_id == viewer.user_id):
        raise NotFound("no such conversation")  # another user's conversation is indistinguishable from none
    return conversation


async def _owned(session: AsyncSession, viewer: Viewer, conversation_id: str) -> Conversation:
    conversation = await session.scalar(
        select(Conversation).where(Conversation.id == conversation_id).with_for_update()
    )
    if conversation is None or not (viewer.is_auditor or conversation.owner_id == viewer.user_id):
        raise NotFound("no such conversation")
    if conversation.owner_id != viewer.user_id:
        raise Forbidden("only the owner may change a conversation")
    return conversation


# -- conversations ----------------------------------------------------------------------------------------------


async def create_conversation(db: Database, viewer: Viewer, data: ConversationCreate) -> ConversationOut:
    now = utc_now()
    conversation = Conversation(
        id=uuid.uuid4().hex,
        owner_id=viewer.user_id,
        title=data.title,
        model=data.model,
        system_prompt=data.system_prompt,
        purpose=data.purpose,
        summary=None,
        summary_upto=None,
        created_at=now,
        updated_at=now,
    )
    try:
        async with db.transaction() as session:
            session.add(conversation)
    except IntegrityError:
        raise Conflict("the owner's account no longer exists") from None
    return conversation_out(conversation)


async def get_conversation(
    db: Database, viewer: Viewer, conversation_id: str, *, limit: int
) -> ConversationWithMessages:
    async with db.session() as session:
        conversation = await _readable(session, viewer, conversation_id)
        page = await _messages(session, conversation.id, limit=limit, before=None)
    return ConversationWithMessages(conversation=conversation_out(conversation), messages=page)


async def list_messages(
    db: Database, viewer: Viewer, conversation_id: str, *, limit: int, cursor: str | None
) -> MessagePage:
    before = decode_int_cursor(cursor) if cursor else None
    async with db.session() as session:
        conversation = await _readable(session, viewer, conversation_id)
        return await _messages(session, conversation.id, limit=limit, before=before)


async def _messages(
    session: AsyncSession, conversation_id: str, *, limit: int, before: int | None
) -> MessagePage:
    """The ``limit`` newest messages (before the id ``before``), oldest first."""
    query = select(Message).where(Message.conversation_id == conversation_id)
    if before is not None:
        query = query.where(Message.id < before)
    rows = list((await session.scalars(query.order_by(Message.id.desc()).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    rows.reverse()
    return MessagePage(
        items=[message_out(m) for m in rows],
        older_cursor=encode_cursor(rows[0].id) if more and rows else None,
    )


def _recent_cursor(conversation: Conversation) -> str:
    return encode_cursor(f"{iso(conversation.updated_at)}|{conversation.id}")


def _after_cursor(cursor: str) -> ColumnElement[bool]:
    moment, _, conversation_id = decode_cursor(cursor).partition("|")
    try:
        updated = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        raise bad_cursor() from None
    return or_(
        Conversation.updated_at < updated,
        and_(Conversation.updated_at == updated, Conversation.id < conversation_id),
    )


async def list_conversations(
    db: Database,
    viewer: Viewer,
    *,
    user_id: str | None,
    all_users: bool,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> ConversationPage:
    """Most recently active first. ``q`` matches titles (case-insensitive, anywhere in the title)."""
    query = select(Conversation).where(_owners(viewer, user_id, all_users))
    if q:
        query = query.where(func.lower(Conversation.title).like(f"%{escape_like(q.lower())}%", escape="\\"))
    if cursor:
        query = query.where(_after_cursor(cursor))
    query = query.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit + 1)
    async with db.session() as session:
        rows = list((await session.scalars(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return ConversationPage(
        items=[conversation_out(c) for c in rows],
        next_cursor=_recent_cursor(rows[-1]) if more and rows else None,
    )


async def rename_conversation(
    db: Database, viewer: Viewer, conversation_id: str, title: str
) -> ConversationOut:
    async with db.transaction() as session:
        conversation = await _owned(session, viewer, conversation_id)
        conversation.title = title
        conversation.updated_at = utc_now()
    return conversation_out(conversation)


async def delete_conversation(db: Database, viewer: Viewer, conversation_id: str) -> None:
    async with db.transaction() as session:
        conversation = await _owned(session, viewer, conversation_id)
        await session.execute(delete(Conversation).where(Conversation.id == conversation.id))


async def export_conversation(db: Database, viewer: Viewer, conversation_id: str) -> ConversationExport:
    async with db.session() as session:
        conversation = await _readable(session, viewer, conversation_id)
        rows = await session.scalars(
            select(Message).where(Message.conversation_id == conversation.id).order_by(Message.id)
        )
        messages = [message_out(m) for m in rows]
    return ConversationExport(
        exported_at=iso(utc_now()), conversation=conversation_out(conversation), messages=messages
    )


def to_markdown(export: ConversationExport) -> str:
    conversation = export.conversation
    lines = [
        f"# {conversation.title}",
        "",
        f"- id: `{conversation.id}`",
        f"- model: `{conversation.model}`",
        f"- created: {conversation.created_at}",
        f"- exported: {export.exported_at}",
    ]
    if conversation.purpose:
        lines += ["", "## Purpose", "", conversation.purpose]
    if conversation.system_prompt:
        lines += ["", "## System prompt", "", conversation.system_prompt]
    lines += ["", "## Messages"]
    for message in export.messages:
        lines += ["", f"### {message.role} · {message.created_at}", "", message.content]
    return "\n".join(lines) + "\n"


async def search_messages(
    db: Database,
    viewer: Viewer,
    q: str,
    *,
    user_id: str | None,
    all_users: bool,
    limit: int,
    cursor: str | None,
) -> SearchPage:
    """Messages holding every word of ``q``, newest first, in the conversations the viewer may list."""
    words = search_words(q)
    if not words:
        return SearchPage(items=[], next_cursor=None)
    query = (
        select(Message, Conversation.title)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            _owners(viewer, user_id, all_users),
            matching(Message.id, words, sqlite=db.is_sqlite, fts_table=FTS_TABLE, tsvector="messages.search"),
        )
    )
    if cursor:
        query = query.where(Message.id < decode_int_cursor(cursor))
    query = query.order_by(Message.id.desc()).limit(limit + 1)
    async with db.session() as session:
        rows = list((await session.execute(query)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return SearchPage(
        items=[
            SearchHit(conversation_id=m.conversation_id, conversation_title=title, message=message_out(m))
            for m, title in rows
        ],
        next_cursor=encode_cursor(rows[-1][0].id) if more and rows else None,
    )


# -- messages and memory ----------------------------------------------------------------------------------------


async def message_tokens(role: str, content: str) -> int:
    """As :func:`aiguardian.usage.tokens.count_message` counts it; long texts are counted in a thread."""
    return tokens.TOKENS_PER_MESSAGE + tokens.count_text(role) + await tokens.count_text_async(content)


async def add_messages(
    db: Database,
    bus: EventBus,
    conversation_id: str,
    messages: Sequence[tuple[str, str, dict[str, Any] | None]],
) -> list[MessageOut]:
    """Store ``(role, content, verdict)`` messages, in order, and publish each as ``conversation.message``.
    The caller has checked that it may write to the conversation."""
    counted = [await message_tokens(role, content) for role, content, _ in messages]
    now = utc_now()
    async with db.transaction() as session:
        conversation = await session.scalar(
            select(Conversation).where(Conversation.id == conversation_id).with_for_update()
        )
        if conversation is None:
            raise NotFound("no such conversation")
        rows = [
            Message(
                conversation_id=conversation_id,
                role=role,
                content=content,
                tokens=count,
                verdict=orjson.dumps(verdict).decode() if verdict else None,
                created_at=now,
            )
            for (role, content, verdict), count in zip(messages, counted, strict=True)
        ]
        session.add_all(rows)
        conversation.updated_at = now
        await session.flush()
        owner = conversation.owner_id
    stored = [message_out(row) for row in rows]
    for message in stored:
        await events.publish(
            bus,
            events.ConversationMessage(
                user_id=owner,
                conversation_id=conversation_id,
                message_id=message.id,
                role=message.role,
                tokens=message.tokens,
                preview=message.content[:PREVIEW_CHARS],
                truncated=len(message.content) > PREVIEW_CHARS,
            ),
        )
    return stored


async def set_summary(db: Database, conversation_id: str, summary: str, upto: int) -> None:
    """Store the summary of the messages up to and including ``upto`` (made in the background)."""
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        if conversation.summary_upto is None or upto > conversation.summary_upto:
            conversation.summary, conversation.summary_upto = summary, upto


async def history_for(
    db: Database, conversation_id: str, new: Turn, *, window: int, reserve: int, budget: int | None = None
) -> History:
    """The history to send with ``new`` (not stored yet). Only the stored turns that could fit are read."""
    limit = limit_of(window, reserve, budget)
    async with db.session() as session:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        totals = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(Message.tokens), 0)).where(
                    Message.conversation_id == conversation_id
                )
            )
        ).one()
        # From the newest back, the turns whose running total still leaves room for the new one.
        upto = (
            select(
                Message.id.label("id"),
                func.sum(Message.tokens).over(order_by=Message.id.desc()).label("running"),
            )
            .where(Message.conversation_id == conversation_id)
            .subquery()
        )
        first = await session.scalar(select(func.min(upto.c.id)).where(upto.c.running <= limit - new.tokens))
        tail: list[Turn] = []
        if first is not None:
            rows = await session.execute(
                select(Message.id, Message.role, Message.content, Message.tokens)
                .where(Message.conversation_id == conversation_id, Message.id >= first)
                .order_by(Message.id)
            )
            tail = [Turn(*row) for row in rows]
    stored_count, stored_tokens = int(totals[0]), int(totals[1])
    return build_history(
        system_prompt=conversation.system_prompt,
        summary=conversation.summary,
        summary_upto=conversation.summary_upto,
        turns=[*tail, new],
        limit=limit,
        earlier_tokens=stored_tokens - sum(turn.tokens for turn in tail),
        earlier_count=stored_count - len(tail),
    )


async def chat_turn(
    db: Database,
    bus: EventBus,
    principal: Principal,
    conversation_id: str,
    content: str,
    *,
    complete: Completer,
    window: int,
    reserve: int,
    budget: int | None = None,
) -> TurnResult:
    """One turn: the owner's message and the model's answer, stored together once the answer is in (a turn
    the guards block, or the model fails, leaves nothing behind)."""
    async with db.session() as session:
        conversation = await _readable(session, Viewer(principal.user_id), conversation_id)
        model = conversation.model
    new = Turn(NEW_TURN_ID, "user", content, await message_tokens("user", content))
    history = await history_for(db, conversation_id, new, window=window, reserve=reserve, budget=budget)
    answer = await complete(principal, {"model": model, "messages": history.messages})
    user, assistant = await add_messages(
        db, bus, conversation_id, [("user", content, None), ("assistant", answer.content, answer.verdict)]
    )
    return TurnResult(user=user, assistant=assistant, history=history)
