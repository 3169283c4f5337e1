"""Posts: writing, reading under the visibility rules, listing with filters, a cursor and full-text search.

Knows no HTTP. A published post is visible to every reader; a draft only to its author and moderators
(admins acting with the admin scope). Only the author and moderators change or delete a post.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    delete,
    exists,
    insert,
    or_,
    select,
    true,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from aiguardian.content.models import FTS_TABLE, Post, PostTag
from aiguardian.content.schemas import PostCreate, PostFilters, PostOut, PostPage, PostUpdate
from aiguardian.core.clock import iso, utc_now
from aiguardian.core.db import Database
from aiguardian.core.errors import Conflict, Forbidden, NotFound
from aiguardian.core.pagination import decode_int_cursor, encode_cursor
from aiguardian.core.search import matching, search_words


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks: a user, and whether they moderate (see and change every post)."""

    user_id: str
    is_moderator: bool = False


def post_out(post: Post, tags: Iterable[str]) -> PostOut:
    return PostOut(
        id=post.id,
        author_id=post.author_id,
        title=post.title,
        body=post.body,
        tags=sorted(tags),
        status=post.status,
        created_at=iso(post.created_at),
        updated_at=iso(post.updated_at),
        published_at=iso(post.published_at) if post.published_at else None,
    )


def _matches(db: Database, words: list[str]) -> ColumnElement[bool]:
    return matching(Post.id, words, sqlite=db.is_sqlite, fts_table=FTS_TABLE, tsvector="posts.search")


def _visible_to(viewer: Viewer) -> ColumnElement[bool]:
    if viewer.is_moderator:
        return true()
    return or_(Post.status == "published", Post.author_id == viewer.user_id)


def _can_see(viewer: Viewer, post: Post) -> bool:
    return viewer.is_moderator or post.status == "published" or post.author_id == viewer.user_id


def _can_change(viewer: Viewer, post: Post) -> bool:
    return viewer.is_moderator or post.author_id == viewer.user_id


async def _tags_of(session: AsyncSession, post_ids: list[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = defaultdict(list)
    if post_ids:
        rows = await session.execute(
            select(PostTag.post_id, PostTag.tag).where(PostTag.post_id.in_(post_ids)).order_by(PostTag.tag)
        )
        for post_id, tag in rows:
            tags[post_id].append(tag)
    return tags


async def _set_tags(session: AsyncSession, post_id: int, tags: list[str], *, replace: bool) -> None:
    if replace:
        await session.execute(delete(PostTag).where(PostTag.post_id == post_id))
    if tags:
        await session.execute(insert(PostTag), [{"post_id": post_id, "tag": tag} for tag in tags])


async def create_post(db: Database, viewer: Viewer, data: PostCreate) -> PostOut:
    now = utc_now()
    post = Post(
        author_id=viewer.user_id,
        title=data.title,
        body=data.body,
        status=data.status,
        created_at=now,
        updated_at=now,
        published_at=now if data.status == "published" else None,
    )
    try:
        async with db.transaction() as session:
            session.add(post)
            await session.flush()
            await _set_tags(session, post.id, data.tags, replace=False)
    except IntegrityError:
        raise Conflict("the author's account no longer exists") from None
    return post_out(post, data.tags)


async def get_post(db: Database, viewer: Viewer, post_id: int) -> PostOut:
    async with db.session() as session:
        post = await session.scalar(select(Post).where(Post.id == post_id, _visible_to(viewer)))
        if post is None:
            raise NotFound("no such post")  # another user's draft is indistinguishable from none
        tags = await _tags_of(session, [post.id])
    return post_out(post, tags[post.id])


async def _for_change(session: AsyncSession, viewer: Viewer, post_id: int) -> Post:
    post = await session.scalar(select(Post).where(Post.id == post_id).with_for_update())
    if post is None or not _can_see(viewer, post):
        raise NotFound("no such post")
    if not _can_change(viewer, post):
        raise Forbidden("only the author or an admin may change this post")
    return post


async def update_post(db: Database, viewer: Viewer, post_id: int, changes: PostUpdate) -> PostOut:
    values: dict[str, Any] = changes.model_dump(exclude_unset=True)
    async with db.transaction() as session:
        post = await _for_change(session, viewer, post_id)
        if values:
            now = utc_now()
            for field in ("title", "body"):
                if field in values:
                    setattr(post, field, values[field])
            status = values.get("status")
            if status is not None and status != post.status:
                post.status = status
                post.published_at = now if status == "published" else None
            if "tags" in values:
                await _set_tags(session, post.id, values["tags"], replace=True)
            post.updated_at = now
        tags = await _tags_of(session, [post.id])
    return post_out(post, tags[post.id])


async def delete_post(db: Database, viewer: Viewer, post_id: int) -> None:
    async with db.transaction() as session:
        post = await _for_change(session, viewer, post_id)
        await session.execute(delete(Post).where(Post.id == post.id))


async def list_posts(
    db: Database, viewer: Viewer, filters: PostFilters, *, limit: int, cursor: str | None
) -> PostPage:
    """Newest first; ``cursor`` continues after the last post of the previous page."""
    query = select(Post).where(_visible_to(viewer))
    if cursor:
        query = query.where(Post.id < decode_int_cursor(cursor))
    if filters.author is not None:
        query = query.where(Post.author_id == filters.author)
    if filters.status is not None:
        query = query.where(Post.status == filters.status)
    if filters.tag is not None:
        query = query.where(exists().where(PostTag.post_id == Post.id, PostTag.tag == filters.tag))
    if filters.q is not None and filters.q.strip():
        words = search_words(filters.q)
        if not words:
            return PostPage(items=[], next_cursor=None)
        query = query.where(_matches(db, words))
    query = query.order_by(Post.id.desc()).limit(limit + 1)
    async with db.session() as session:
        posts = list((await session.scalars(query)).all())
        more = len(posts) > limit
        posts = posts[:limit]
        tags = await _tags_of(session, [post.id for post in posts])
    return PostPage(
        items=[post_out(post, tags[post.id]) for post in posts],
        next_cursor=encode_cursor(posts[-1].id) if more and posts else None,
    )
