"""What a WebSocket client may send. Server messages are built in ``socket.py`` (see the README for both)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

MAX_TOPICS = 50

Topic = Annotated[str, Field(min_length=1, max_length=64)]
MessageId = Annotated[str, Field(max_length=64)] | int | None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: MessageId = None  # echoed in the answer, to pair them


class Auth(_Message):
    type: Literal["auth"]
    token: Annotated[str, Field(min_length=1, max_length=4096)]


class Subscribe(_Message):
    type: Literal["subscribe"]
    topics: Annotated[list[Topic], Field(min_length=1, max_length=MAX_TOPICS)]


class Unsubscribe(_Message):
    type: Literal["unsubscribe"]
    topics: Annotated[list[Topic], Field(min_length=1, max_length=MAX_TOPICS)]


class Ping(_Message):
    type: Literal["ping"]


class Pong(_Message):
    type: Literal["pong"]


class Chat(_Message):
    """A conversation turn, as ``POST /api/v1/chat`` takes it (its fields are checked as that body's)."""

    type: Literal["chat"]
    message: str
    conversation_id: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    documents: list[str] | None = None


ClientMessage = Annotated[Auth | Subscribe | Unsubscribe | Ping | Pong | Chat, Field(discriminator="type")]
client_message: TypeAdapter[Auth | Subscribe | Unsubscribe | Ping | Pong | Chat] = TypeAdapter(ClientMessage)
