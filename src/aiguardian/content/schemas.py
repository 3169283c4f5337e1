from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, field_validator

PostStatus = Literal["draft", "published"]

TITLE_MAX = 300
BODY_MAX = 100_000
TAGS_MAX = 20
TAG_MAX = 50
SEARCH_MAX = 200

_TAG_CHARS = re.compile(r"[a-z0-9_\- ]+")


def normalise_tag(value: str) -> str:
    """Lower case, runs of whitespace to one space; then only ``a-z 0-9 - _`` and spaces may remain."""
    tag = " ".join(value.lower().split())
    if not tag:
        raise ValueError("a tag cannot be empty")
    if len(tag) > TAG_MAX:
        raise ValueError(f"a tag has at most {TAG_MAX} characters")
    if not _TAG_CHARS.fullmatch(tag):
        raise ValueError("a tag uses only a-z, 0-9, '-', '_' and spaces")
    return tag


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it on both databases alike.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Tag = Annotated[str, AfterValidator(normalise_tag)]
Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX), AfterValidator(_no_nul)
]
Body = Annotated[str, Field(max_length=BODY_MAX), AfterValidator(_no_nul)]
Tags = Annotated[list[Tag], Field(max_length=TAGS_MAX)]


def _unique(tags: list[str]) -> list[str]:
    return sorted(set(tags))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostCreate(Strict):
    title: Title
    body: Body = ""
    tags: Tags = Field(default_factory=list)
    status: PostStatus = "draft"

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        return _unique(tags)


class PostUpdate(Strict):
    """Only the fields sent change; ``null`` is not a value for any of them."""

    title: Title | None = None
    body: Body | None = None
    tags: Tags | None = None
    status: PostStatus | None = None

    @field_validator("title", "body", "tags", "status", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:  # defaults are not validated, so this only sees an explicit null
            raise ValueError("cannot be null; leave the field out to keep it")
        return value

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str] | None) -> list[str] | None:
        return None if tags is None else _unique(tags)


class PostOut(BaseModel):
    id: int
    author_id: str
    title: str
    body: str
    tags: list[str]
    status: PostStatus
    created_at: str
    updated_at: str
    published_at: str | None


class PostPage(BaseModel):
    items: list[PostOut]
    next_cursor: str | None


class PostFilters(BaseModel):
    author: str | None = None
    tag: str | None = None
    status: PostStatus | None = None
    q: str | None = None
