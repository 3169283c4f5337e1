from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field

Role = Literal["admin", "member"]
Scope = Literal["read", "write", "chat", "admin"]
ALL_SCOPES: frozenset[str] = frozenset({"read", "write", "chat", "admin"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)
    display_name: str = Field("", max_length=200)


class LoginRequest(Strict):
    username: str = Field(min_length=1, max_length=320, description="The account's email address.")
    password: str = Field(min_length=1, max_length=256)


class RefreshRequest(Strict):
    refresh_token: str = Field(min_length=1, max_length=200)


class LogoutRequest(Strict):
    refresh_token: str | None = Field(None, min_length=1, max_length=200)


class TokenPair(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_in: int
    refresh_token: str


class UserOut(BaseModel):
    id: str
    email: str
    display_name: str
    role: Role
    is_active: bool
    created_at: str
    updated_at: str


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class ProfileUpdate(Strict):
    display_name: str | None = Field(None, max_length=200)
    email: EmailStr | None = Field(None, max_length=320)


class PasswordChange(Strict):
    current_password: str = Field(min_length=1, max_length=256)
    new_password: str = Field(min_length=1, max_length=256)


class UserCreate(Strict):
    email: EmailStr = Field(max_length=320)
    password: str = Field(min_length=1, max_length=256)
    display_name: str = Field("", max_length=200)
    role: Role = "member"


class UserUpdate(Strict):
    display_name: str | None = Field(None, max_length=200)
    email: EmailStr | None = Field(None, max_length=320)
    role: Role | None = None
    is_active: bool | None = None


class RoleUpdate(Strict):
    role: Role


ModelName = Annotated[str, Field(min_length=1, max_length=200)]

RATE_LIMIT_PATTERN = r"^\d{1,9}\s*(/|per)\s*(\d{1,6}\s*)?(second|minute|hour|day)s?$"


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(default_factory=lambda: list[Scope](["read", "chat"]), min_length=1)
    expires_at: datetime | None = None
    rate_limit: str | None = Field(
        None, max_length=64, pattern=RATE_LIMIT_PATTERN, description="For example `60/minute`."
    )
    user_id: str | None = Field(None, max_length=32, description="Admins only: make the key for this user.")
    models: list[ModelName] | None = Field(
        None, max_length=500, description="The models this key may use; omit or null for every model."
    )


class KeyOut(BaseModel):
    id: str
    user_id: str
    name: str
    prefix: str
    scopes: list[str]
    models: list[str] | None
    rate_limit: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret. Shown once: only its hash is stored.")


class KeyPage(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None
