from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aiguardian.core.db import Base

FTS_TABLE = "messages_fts"

# As for posts: search is an FTS5 table kept by triggers on SQLite, a generated tsvector column with a GIN
# index on PostgreSQL; only migration 0008 makes them, and autogenerate must leave them alone.
Base.metadata.info.setdefault("unmanaged", set()).update(
    {
        ("table", FTS_TABLE),
        *(("table", f"{FTS_TABLE}_{shadow}") for shadow in ("data", "idx", "docsize", "config")),
        ("column", "messages.search"),
        ("index", "ix_messages_search"),
    }
)

_ID = BigInteger().with_variant(Integer, "sqlite")


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_recent", "owner_id", "updated_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(300))
    model: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text)  # what the conversation is for; drift is measured against it
    # What the model made of the turns up to and including message `summary_upto`; it stands in for them
    # when the whole history no longer fits.
    summary: Mapped[str | None] = mapped_column(Text)
    summary_upto: Mapped[int | None] = mapped_column(_ID)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Message(Base):
    __tablename__ = "messages"
    # Ids are never reused on SQLite either: the FTS rows and `summary_upto` refer to messages by id.
    __table_args__ = (
        Index("ix_messages_conversation", "conversation_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)  # counted once, framing included, when stored
    verdict: Mapped[str | None] = mapped_column(Text)  # the guards' verdict summary, JSON
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
