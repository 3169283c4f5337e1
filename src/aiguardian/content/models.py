from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from aiguardian.core.db import Base

FTS_TABLE = "posts_fts"

# The search structures differ per database (an FTS5 table kept by triggers on SQLite, a generated tsvector
# column with a GIN index on PostgreSQL), so only migration 0003 makes them and the ORM metadata does not
# describe them. Listed here so that autogenerate leaves them alone (aiguardian.migrations.autogen).
Base.metadata.info.setdefault("unmanaged", set()).update(
    {
        ("table", FTS_TABLE),
        *(("table", f"{FTS_TABLE}_{shadow}") for shadow in ("data", "idx", "docsize", "config")),
        ("column", "posts.search"),
        ("index", "ix_posts_search"),
    }
)

_ID = BigInteger().with_variant(Integer, "sqlite")


class Post(Base):
    __tablename__ = "posts"
    # Ids are never reused on SQLite either: audit rows and FTS rows refer to posts by id.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(_ID, primary_key=True)
    author_id: Mapped[str] = mapped_column(String(32), ForeignKey("users.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PostTag(Base):
    """One tag of one post: a row per tag, so filtering by a tag is an exact, indexed equality."""

    __tablename__ = "post_tags"

    post_id: Mapped[int] = mapped_column(_ID, ForeignKey("posts.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True, index=True)
