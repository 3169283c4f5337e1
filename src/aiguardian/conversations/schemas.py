from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

TITLE_MAX = 300
MODEL_MAX = 200
PROMPT_MAX = 100_000
SEARCH_MAX = 200
DEFAULT_TITLE = "New conversation"

Role = Literal["user", "assistant", "system", "tool"]


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL; refuse it on both databases alike.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Title = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TITLE_MAX), AfterValidator(_no_nul)
]
Prompt = Annotated[str, Field(max_length=PROMPT_MAX), AfterValidator(_no_nul)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationCreate(Strict):
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MODEL_MAX)]
    title: Title = DEFAULT_TITLE
    system_prompt: Prompt = ""
    purpose: Prompt = ""


class ConversationRename(Strict):
    title: Title


class ConversationOut(BaseModel):
    id: str
    owner_id: str
    title: str
    model: str
    system_prompt: str
    purpose: str
    summary: str | None
    summary_upto: int | None
    created_at: str
    updated_at: str


class MessageOut(BaseModel):
    id: int
    conversation_id: str
    role: str
    content: str
    tokens: int
    verdict: dict[str, Any] | None
    created_at: str


class ConversationPage(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None


class MessagePage(BaseModel):
    """Messages oldest first; ``older_cursor`` fetches the page before this one (null: this is the start)."""

    items: list[MessageOut]
    older_cursor: str | None


class ConversationWithMessages(BaseModel):
    conversation: ConversationOut
    messages: MessagePage


class ConversationExport(BaseModel):
    """The whole conversation, every message oldest first."""

    format: Literal["aiguardian.conversation.v1"] = "aiguardian.conversation.v1"
    exported_at: str
    conversation: ConversationOut
    messages: list[MessageOut]


class SearchHit(BaseModel):
    conversation_id: str
    conversation_title: str
    message: MessageOut


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: str | None


class ChatRequest(Strict):
    """``POST /api/v1/chat``: a new conversation without ``conversation_id``, else the next turn of one."""

    message: Annotated[str, Field(min_length=1, max_length=PROMPT_MAX), AfterValidator(_no_nul)]
    conversation_id: Annotated[str | None, Field(max_length=32, pattern=r"^[A-Za-z0-9_-]+$")] = None
    model: Annotated[
        str | None, StringConstraints(strip_whitespace=True, min_length=1, max_length=MODEL_MAX)
    ] = None
    system_prompt: Prompt | None = None
    documents: Annotated[list[Prompt] | None, Field(max_length=50)] = None
    stream: bool = False


class ChatOut(BaseModel):
    conversation_id: str
    user_message_id: int
    message: MessageOut
    verdicts: list[dict[str, Any]]
    warnings: list[str]
    usage: dict[str, Any]
