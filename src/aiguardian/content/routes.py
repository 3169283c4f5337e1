from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator

from aiguardian.content import service
from aiguardian.content.schemas import (
    SEARCH_MAX,
    TAG_MAX,
    PostCreate,
    PostFilters,
    PostOut,
    PostPage,
    PostStatus,
    PostUpdate,
    normalise_tag,
)
from aiguardian.content.service import Viewer
from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.http import RequestId, audit
from aiguardian.core.runtime import RuntimeDep
from aiguardian.identity.auth import Reader, Writer
from aiguardian.identity.service import Principal

router = APIRouter(prefix="/api/v1/posts", tags=["posts"])

PostId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _viewer(principal: Principal) -> Viewer:
    # An admin moderates only when the credential carries the admin scope, as everywhere else.
    return Viewer(principal.user_id, is_moderator=principal.is_admin and "admin" in principal.scopes)


@router.post("", status_code=201, response_model=Envelope[PostOut])
async def create_post(
    body: PostCreate, request: Request, principal: Writer, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[PostOut]:
    post = await service.create_post(runtime.db, _viewer(principal), body)
    audit(request, "post.create", str(post.id))
    return ok(post, request_id)


@router.get("", response_model=Envelope[PostPage])
async def list_posts(
    principal: Reader,
    runtime: RuntimeDep,
    request_id: RequestId,
    author: Annotated[str | None, Query(max_length=32, pattern=r"^[A-Za-z0-9_-]+$")] = None,
    tag: Annotated[str | None, Query(max_length=4 * TAG_MAX), AfterValidator(normalise_tag)] = None,
    status: PostStatus | None = None,
    q: Annotated[str | None, Query(max_length=SEARCH_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Envelope[PostPage]:
    filters = PostFilters(author=author, tag=tag, status=status, q=q)
    page = await service.list_posts(runtime.db, _viewer(principal), filters, limit=limit, cursor=cursor)
    return ok(page, request_id)


@router.get("/{post_id}", response_model=Envelope[PostOut])
async def get_post(
    post_id: PostId, principal: Reader, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[PostOut]:
    return ok(await service.get_post(runtime.db, _viewer(principal), post_id), request_id)


@router.patch("/{post_id}", response_model=Envelope[PostOut])
async def update_post(
    post_id: PostId,
    body: PostUpdate,
    request: Request,
    principal: Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
) -> Envelope[PostOut]:
    audit(request, "post.update", str(post_id))
    post = await service.update_post(runtime.db, _viewer(principal), post_id, body)
    return ok(post, request_id)


@router.delete("/{post_id}", response_model=Envelope[dict[str, bool]])
async def delete_post(
    post_id: PostId, request: Request, principal: Writer, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[dict[str, bool]]:
    audit(request, "post.delete", str(post_id))
    await service.delete_post(runtime.db, _viewer(principal), post_id)
    return ok({"deleted": True}, request_id)
