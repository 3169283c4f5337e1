from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from aiguardian.core.envelope import Envelope, ok
from aiguardian.core.errors import Forbidden, ReasonCode, ValidationFailed
from aiguardian.core.http import RequestId, audit
from aiguardian.core.runtime import RuntimeDep
from aiguardian.identity.auth import Admin, CurrentPrincipal, IdentityDep, Reader, Writer, client_ip, enforce
from aiguardian.identity.schemas import (
    KeyCreate,
    KeyCreated,
    KeyOut,
    KeyPage,
    LoginRequest,
    LogoutRequest,
    PasswordChange,
    ProfileUpdate,
    RefreshRequest,
    RegisterRequest,
    Role,
    RoleUpdate,
    TokenPair,
    UserCreate,
    UserOut,
    UserPage,
    UserUpdate,
)
from aiguardian.identity.service import key_out, user_out

auth_router = APIRouter(prefix="/api/v1/auth", tags=["auth"])
users_router = APIRouter(prefix="/api/v1/users", tags=["users"])
keys_router = APIRouter(prefix="/api/v1/keys", tags=["api keys"])


# -- auth ---------------------------------------------------------------------------------------------------


@auth_router.post("/register", status_code=201, response_model=Envelope[UserOut])
async def register(
    body: RegisterRequest, request: Request, identity: IdentityDep, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[UserOut]:
    if not runtime.settings.registration_enabled:
        raise Forbidden("registration is closed; ask an admin", reason_code=ReasonCode.REGISTRATION_CLOSED)
    await enforce(request, runtime.settings.login_rate_limit_per_ip, f"register-ip:{client_ip(request)}")
    user = await identity.create_user(body.email, body.password, body.display_name)
    audit(request, "user.register", user.id)
    request.state.actor = f"user:{user.id}"
    return ok(user_out(user), request_id)


async def _login_form(request: Request) -> LoginRequest:
    """OAuth2 password flow (form fields ``username`` and ``password``), or the same fields as JSON."""
    content_type = request.headers.get("content-type", "")
    raw: Any
    try:
        if content_type.startswith("application/json"):
            raw = await request.json()
        else:
            form = await request.form()
            raw = {k: v for k, v in form.items() if k in ("username", "password")}
    except ValueError:
        raise ValidationFailed(
            "the request body is not valid JSON or form data", reason_code=ReasonCode.MALFORMED_JSON
        ) from None
    try:
        return LoginRequest.model_validate(raw)
    except ValidationError as exc:
        details = [
            {"field": "body." + ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()
        ]
        raise ValidationFailed(f"{details[0]['field']}: {details[0]['message']}", details=details) from None


@auth_router.post(
    "/login",
    response_model=Envelope[TokenPair],
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {"schema": LoginRequest.model_json_schema()},
                "application/json": {"schema": LoginRequest.model_json_schema()},
            }
        }
    },
)
async def login(
    request: Request, identity: IdentityDep, runtime: RuntimeDep, request_id: RequestId
) -> JSONResponse:
    settings = runtime.settings
    audit(request, "auth.login")  # first, so attempts refused by a rate limit are audited as logins too
    await enforce(
        request,
        settings.login_rate_limit_per_ip,
        f"login-ip:{client_ip(request)}",
        ReasonCode.LOGIN_RATE_LIMITED,
    )
    body = await _login_form(request)
    account = body.username.strip().lower()
    request.state.actor = f"login:{account[:100]}"
    await enforce(
        request,
        settings.login_rate_limit_per_account,
        f"login-account:{account}",
        ReasonCode.LOGIN_RATE_LIMITED,
    )
    user, pair = await identity.login(account, body.password)
    request.state.actor = f"user:{user.id}"
    audit(request, "auth.login", user.id)
    envelope = ok(pair, request_id).model_dump(mode="json")
    # OAuth2 clients (and /docs' Authorize button) read these two fields at the top level.
    envelope.update(access_token=pair.access_token, token_type=pair.token_type)
    return JSONResponse(envelope, headers={"Cache-Control": "no-store"})


@auth_router.post("/refresh", response_model=Envelope[TokenPair])
async def refresh(
    body: RefreshRequest, request: Request, identity: IdentityDep, runtime: RuntimeDep, request_id: RequestId
) -> Envelope[TokenPair]:
    await enforce(request, runtime.settings.login_rate_limit_per_ip, f"refresh-ip:{client_ip(request)}")
    audit(request, "auth.refresh")
    return ok(await identity.refresh(body.refresh_token), request_id)


@auth_router.post("/logout", response_model=Envelope[dict[str, bool]])
async def logout(
    body: LogoutRequest,
    request: Request,
    principal: CurrentPrincipal,
    identity: IdentityDep,
    request_id: RequestId,
) -> Envelope[dict[str, bool]]:
    await identity.logout(body.refresh_token, principal.session_id, principal.user_id)
    audit(request, "auth.logout", principal.user_id)
    return ok({"signed_out": True}, request_id)


@auth_router.get("/me", response_model=Envelope[UserOut])
async def me(principal: CurrentPrincipal, identity: IdentityDep, request_id: RequestId) -> Envelope[UserOut]:
    return ok(user_out(await identity.get_user(principal.user_id)), request_id)


@auth_router.patch("/me", response_model=Envelope[UserOut])
async def update_me(
    body: ProfileUpdate, request: Request, principal: Writer, identity: IdentityDep, request_id: RequestId
) -> Envelope[UserOut]:
    user = await identity.update_user(principal.user_id, display_name=body.display_name, email=body.email)
    audit(request, "user.update_profile", principal.user_id)
    return ok(user_out(user), request_id)


@auth_router.post("/password", response_model=Envelope[dict[str, bool]])
async def change_password(
    body: PasswordChange, request: Request, principal: Writer, identity: IdentityDep, request_id: RequestId
) -> Envelope[dict[str, bool]]:
    if principal.via != "session":
        raise Forbidden("change the password from a login session, not with an API key")
    await identity.change_password(
        principal.user_id, body.current_password, body.new_password, principal.session_id
    )
    audit(request, "user.change_password", principal.user_id)
    return ok({"changed": True}, request_id)


# -- users (admin) -------------------------------------------------------------------------------------------


@users_router.get("", response_model=Envelope[UserPage])
async def list_users(
    _admin: Admin,
    identity: IdentityDep,
    request_id: RequestId,
    role: Role | None = None,
    active: bool | None = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Envelope[UserPage]:
    users, next_cursor = await identity.list_users(role=role, active=active, q=q, limit=limit, cursor=cursor)
    return ok(UserPage(items=[user_out(u) for u in users], next_cursor=next_cursor), request_id)


@users_router.post("", status_code=201, response_model=Envelope[UserOut])
async def create_user(
    body: UserCreate, request: Request, _admin: Admin, identity: IdentityDep, request_id: RequestId
) -> Envelope[UserOut]:
    user = await identity.create_user(body.email, body.password, body.display_name, body.role)
    audit(request, "user.create", user.id)
    return ok(user_out(user), request_id)


@users_router.get("/{user_id}", response_model=Envelope[UserOut])
async def get_user(
    user_id: str, _admin: Admin, identity: IdentityDep, request_id: RequestId
) -> Envelope[UserOut]:
    return ok(user_out(await identity.get_user(user_id)), request_id)


@users_router.patch("/{user_id}", response_model=Envelope[UserOut])
async def update_user(
    user_id: str,
    body: UserUpdate,
    request: Request,
    _admin: Admin,
    identity: IdentityDep,
    request_id: RequestId,
) -> Envelope[UserOut]:
    user = await identity.update_user(
        user_id, display_name=body.display_name, email=body.email, role=body.role, is_active=body.is_active
    )
    audit(request, "user.role_change" if body.role else "user.update", user_id)
    return ok(user_out(user), request_id)


@users_router.put("/{user_id}/role", response_model=Envelope[UserOut])
async def set_role(
    user_id: str,
    body: RoleUpdate,
    request: Request,
    _admin: Admin,
    identity: IdentityDep,
    request_id: RequestId,
) -> Envelope[UserOut]:
    user = await identity.update_user(user_id, role=body.role)
    audit(request, "user.role_change", user_id)
    return ok(user_out(user), request_id)


@users_router.post("/{user_id}/disable", response_model=Envelope[UserOut])
async def disable_user(
    user_id: str, request: Request, _admin: Admin, identity: IdentityDep, request_id: RequestId
) -> Envelope[UserOut]:
    user = await identity.update_user(user_id, is_active=False)
    audit(request, "user.disable", user_id)
    return ok(user_out(user), request_id)


@users_router.post("/{user_id}/enable", response_model=Envelope[UserOut])
async def enable_user(
    user_id: str, request: Request, _admin: Admin, identity: IdentityDep, request_id: RequestId
) -> Envelope[UserOut]:
    user = await identity.update_user(user_id, is_active=True)
    audit(request, "user.enable", user_id)
    return ok(user_out(user), request_id)


@users_router.delete("/{user_id}", response_model=Envelope[dict[str, bool]])
async def delete_user(
    user_id: str, request: Request, _admin: Admin, identity: IdentityDep, request_id: RequestId
) -> Envelope[dict[str, bool]]:
    await identity.delete_user(user_id)
    audit(request, "user.delete", user_id)
    return ok({"deleted": True}, request_id)


# -- API keys ------------------------------------------------------------------------------------------------


@keys_router.post("", status_code=201, response_model=Envelope[KeyCreated])
async def create_key(
    body: KeyCreate, request: Request, principal: Writer, identity: IdentityDep, request_id: RequestId
) -> Envelope[KeyCreated]:
    owner = body.user_id or principal.user_id
    if owner != principal.user_id and not (principal.is_admin and "admin" in principal.scopes):
        raise Forbidden("only admins make keys for other users")
    if not set(body.scopes) <= principal.scopes:
        raise Forbidden("a key cannot have scopes its maker lacks", reason_code=ReasonCode.SCOPE_MISSING)
    if principal.models is not None and (body.models is None or not set(body.models) <= principal.models):
        raise Forbidden(
            "a key cannot use models its maker may not use", reason_code=ReasonCode.MODEL_NOT_ALLOWED
        )
    key, secret = await identity.create_key(
        owner,
        body.name,
        list(body.scopes),
        expires_at=body.expires_at,
        rate_limit=body.rate_limit,
        created_by=principal.user_id,
        models=body.models,
    )
    audit(request, "key.create", key.id)
    return ok(KeyCreated(**key_out(key).model_dump(), key=secret), request_id)


@keys_router.get("", response_model=Envelope[KeyPage])
async def list_keys(
    principal: Reader,
    identity: IdentityDep,
    request_id: RequestId,
    user_id: Annotated[str | None, Query(max_length=32)] = None,
    all_users: bool = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Envelope[KeyPage]:
    owner: str | None = principal.user_id
    if user_id or all_users:
        if not principal.is_admin:
            raise Forbidden("only admins list other users' keys")
        owner = user_id if user_id else None
    keys, next_cursor = await identity.list_keys(owner, limit=limit, cursor=cursor)
    return ok(KeyPage(items=[key_out(k) for k in keys], next_cursor=next_cursor), request_id)


@keys_router.get("/{key_id}", response_model=Envelope[KeyOut])
async def get_key(
    key_id: str, principal: Reader, identity: IdentityDep, request_id: RequestId
) -> Envelope[KeyOut]:
    return ok(key_out(await identity.get_key(key_id, principal)), request_id)


@keys_router.delete("/{key_id}", response_model=Envelope[KeyOut])
async def revoke_key(
    key_id: str, request: Request, principal: Writer, identity: IdentityDep, request_id: RequestId
) -> Envelope[KeyOut]:
    key = await identity.revoke_key(key_id, principal)
    audit(request, "key.revoke", key.id)
    return ok(key_out(key), request_id)
