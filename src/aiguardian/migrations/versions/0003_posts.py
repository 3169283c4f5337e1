"""posts: posts, their tags, and full-text search (FTS5 on SQLite, tsvector + GIN on PostgreSQL)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# External-content FTS5 table over posts(title, body); the triggers keep it in step with every write,
# including rows removed by ON DELETE CASCADE when their author is deleted. A later batch migration of
# `posts` on SQLite recreates the table and so drops these triggers: it must create them again.
_SQLITE_SEARCH = (
    "CREATE VIRTUAL TABLE posts_fts USING fts5(title, body, content='posts', content_rowid='id')",
    """CREATE TRIGGER posts_fts_insert AFTER INSERT ON posts BEGIN
        INSERT INTO posts_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
    END""",
    """CREATE TRIGGER posts_fts_delete AFTER DELETE ON posts BEGIN
        INSERT INTO posts_fts(posts_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
    END""",
    """CREATE TRIGGER posts_fts_update AFTER UPDATE OF title, body ON posts BEGIN
        INSERT INTO posts_fts(posts_fts, rowid, title, body) VALUES ('delete', old.id, old.title, old.body);
        INSERT INTO posts_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
    END""",
    "INSERT INTO posts_fts(posts_fts) VALUES ('rebuild')",
)

_POSTGRES_SEARCH = (
    "ALTER TABLE posts ADD COLUMN search tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple', coalesce(title, '') || ' ' || coalesce(body, ''))) STORED",
    "CREATE INDEX ix_posts_search ON posts USING gin (search)",
)


def upgrade() -> None:
    op.create_table(
        "posts",
        sa.Column("id", _ID, nullable=False),
        sa.Column("author_id", sa.String(32), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["author_id"], ["users.id"], name=op.f("fk_posts_author_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posts")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_posts_author_id"), "posts", ["author_id"])
    op.create_index(op.f("ix_posts_status"), "posts", ["status"])
    op.create_table(
        "post_tags",
        sa.Column("post_id", _ID, nullable=False),
        sa.Column("tag", sa.String(50), nullable=False),
        sa.ForeignKeyConstraint(
            ["post_id"], ["posts.id"], name=op.f("fk_post_tags_post_id_posts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("post_id", "tag", name=op.f("pk_post_tags")),
    )
    op.create_index(op.f("ix_post_tags_tag"), "post_tags", ["tag"])
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE_SEARCH:
            op.execute(statement)
    elif dialect == "postgresql":
        for statement in _POSTGRES_SEARCH:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("posts_fts_insert", "posts_fts_delete", "posts_fts_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS posts_fts")
    op.drop_table("post_tags")
    op.drop_table("posts")
