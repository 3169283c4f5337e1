"""Identity: users, login sessions (refresh-token families), API keys, and who a credential is.

Knows no HTTP. Every change that could make another process's cached view wrong is published on the bus
(``identity.user_changed``, ``identity.key_changed``) and every process drops its cached entry at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import structlog
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from aiguardian.core.bus import EventBus
from aiguardian.core.cache import CashewsBackend
from aiguardian.core.clock import as_utc, iso, utc_now
from aiguardian.core.db import Database
from aiguardian.core.errors import (
    Conflict,
    Forbidden,
    NotAuthenticated,
    NotFound,
    ReasonCode,
    ValidationFailed,
)
from aiguardian.core.pagination import decode_cursor, encode_cursor, escape_like
from aiguardian.identity import passwords, tokens
from aiguardian.identity.models import ApiKey, RefreshToken, User
from aiguardian.identity.schemas import ALL_SCOPES, KeyOut, TokenPair, UserOut
from aiguardian.settings import Settings

log = structlog.get_logger("aiguardian.identity")

USER_CHANGED = "identity.user_changed"
KEY_CHANGED = "identity.key_changed"
SESSIONS_REVOKED = "identity.sessions_revoked"

Lookup = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as resolved from a credential."""

    user_id: str
    email: str
    role: str
    scopes: frozenset[str]
    via: str  # "session" or "api_key"
    key_id: str | None = None
    rate_limit: str | None = None
    session_id: str | None = None
    models: frozenset[str] | None = None  # the models an API key may use; None: every model

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def actor(self) -> str:
        return f"user:{self.user_id}" + (f"/key:{self.key_id}" if self.key_id else "")


@dataclass(frozen=True, slots=True)
class _Resolved:
    principal: Principal
    expires_at: float | None  # the key's own expiry (epoch seconds)
    valid_until: float  # when the states it was made from leave the cache (epoch seconds)


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        role=user.role,
        is_active=user.is_active,
        created_at=iso(user.created_at),
        updated_at=iso(user.updated_at),
    )


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        user_id=key.user_id,
        name=key.name,
        prefix=key.prefix,
        scopes=orjson.loads(key.scopes),
        models=_models(key.models),
        rate_limit=key.rate_limit,
        created_at=iso(key.created_at),
        expires_at=iso(key.expires_at) if key.expires_at else None,
        revoked_at=iso(key.revoked_at) if key.revoked_at else None,
    )


def _models(stored: str | None) -> list[str] | None:
    return None if stored is None else list(orjson.loads(stored))


class Identity:
    def __init__(
        self, settings: Settings, secret_key: str, db: Database, cache: CashewsBackend, bus: EventBus
    ):
        self.settings = settings
        self.secret_key = secret_key
        self.db = db
        self.cache = cache
        self.bus = bus
        # API keys resolved to a principal, by key hash: the gateway's every request looks its key up, and
        # this spares it the two cache reads (key, then owner) and the Principal each would cost. An entry
        # lives no longer than the states it was made from, and the same events drop it.
        self._resolved: dict[str, _Resolved] = {}
        self._resolved_max = settings.cache_memory_size
        self._forgotten = 0  # counts invalidations, so a lookup racing one does not store what it read
        bus.on(USER_CHANGED, self._forget_user)
        bus.on(KEY_CHANGED, self._forget_key)
        bus.on(SESSIONS_REVOKED, self._forget_sessions)

    # -- cache invalidation -------------------------------------------------------------------------------

    async def _forget_user(self, _topic: str, payload: dict[str, Any]) -> None:
        user_id = payload.get("user_id")
        self._forgotten += 1
        for key_hash in [h for h, r in self._resolved.items() if r.principal.user_id == user_id]:
            self._resolved.pop(key_hash, None)
        await self.cache.delete(f"user:{user_id}")

    async def _forget_key(self, _topic: str, payload: dict[str, Any]) -> None:
        key_hash = payload.get("key_hash")
        self._forgotten += 1
        self._resolved.pop(str(key_hash), None)
        await self.cache.delete(f"apikey:{key_hash}")

    async def _forget_sessions(self, _topic: str, payload: dict[str, Any]) -> None:
        for family in payload.get("families", []):
            await self.cache.delete(f"session:{family}")

    async def _sessions_revoked(self, families: list[str]) -> None:
        if families:
            await self.bus.publish(SESSIONS_REVOKED, {"families": families})

    async def _user_changed(self, user_id: str) -> None:
        await self.bus.publish(USER_CHANGED, {"user_id": user_id})

    async def _keys_changed(self, key_hashes: list[str]) -> None:
        for key_hash in key_hashes:
            await self.bus.publish(KEY_CHANGED, {"key_hash": key_hash})

    # -- users ----------------------------------------------------------------------------------------------

    async def create_user(
        self, email: str, password: str, display_name: str = "", role: str = "member"
    ) -> User:
        email = email.strip().lower()
        passwords.check_policy(password, min_length=self.settings.password_min_length, email=email)
        now = utc_now()
        user = User(
            id=tokens.new_id(),
            email=email,
            display_name=display_name,
            password_hash=await passwords.hash_password(password),
            role=role,
            is_active=True,
            created_at=now,
            updated_at=now,
        )
        try:
            async with self.db.transaction() as session:
                session.add(user)
        except IntegrityError:
            raise Conflict("an account with this email already exists") from None
        return user

    async def get_user(self, user_id: str) -> User:
        async with self.db.session() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise NotFound("no such user")
        return user

    async def find_user_by_email(self, email: str) -> User | None:
        async with self.db.session() as session:
            return await session.scalar(select(User).where(User.email == email.strip().lower()))

    async def has_admin(self) -> bool:
        async with self.db.session() as session:
            return bool(
                await session.scalar(select(func.count()).select_from(User).where(User.role == "admin"))
            )

    async def list_users(
        self, *, role: str | None, active: bool | None, q: str | None, limit: int, cursor: str | None
    ) -> tuple[list[User], str | None]:
        query = select(User)
        if role:
            query = query.where(User.role == role)
        if active is not None:
            query = query.where(User.is_active == active)
        if q:
            needle = "%" + escape_like(q.lower()) + "%"
            query = query.where(
                or_(User.email.like(needle, escape="\\"), User.display_name.like(needle, escape="\\"))
            )
        if cursor:
            query = query.where(User.id > decode_cursor(cursor))
        query = query.order_by(User.id).limit(limit + 1)
        async with self.db.session() as session:
            users = list((await session.scalars(query)).all())
        more = len(users) > limit
        users = users[:limit]
        return users, (encode_cursor(users[-1].id) if more and users else None)

    async def update_user(self, user_id: str, **changes: Any) -> User:
        values = {k: v for k, v in changes.items() if v is not None}
        if "email" in values:
            values["email"] = values["email"].strip().lower()
        if values.get("role") == "member" or values.get("is_active") is False:
            await self._keep_one_admin(user_id)
        values["updated_at"] = utc_now()
        try:
            async with self.db.transaction() as session:
                result = await session.execute(update(User).where(User.id == user_id).values(**values))
                if result.rowcount == 0:  # type: ignore[attr-defined]
                    raise NotFound("no such user")
                families = (
                    await self._revoke_sessions(session, user_id) if values.get("is_active") is False else []
                )
        except IntegrityError:
            raise Conflict("an account with this email already exists") from None
        await self._user_changed(user_id)
        await self._sessions_revoked(families)
        return await self.get_user(user_id)

    async def delete_user(self, user_id: str) -> None:
        await self._keep_one_admin(user_id)
        async with self.db.transaction() as session:
            hashes = list(
                (await session.scalars(select(ApiKey.key_hash).where(ApiKey.user_id == user_id))).all()
            )
            await session.execute(delete(RefreshToken).where(RefreshToken.user_id == user_id))
            await session.execute(delete(ApiKey).where(ApiKey.user_id == user_id))
            result = await session.execute(delete(User).where(User.id == user_id))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                raise NotFound("no such user")
        await self._user_changed(user_id)
        await self._keys_changed(hashes)

    async def _keep_one_admin(self, user_id: str) -> None:
        async with self.db.session() as session:
            target = await session.get(User, user_id)
            if target is None or target.role != "admin" or not target.is_active:
                return
            admins = await session.scalar(
                select(func.count()).select_from(User).where(User.role == "admin", User.is_active.is_(True))
            )
        if (admins or 0) <= 1:
            raise Conflict("this is the last active admin; make another admin first")

    async def change_password(self, user_id: str, current: str, new: str, keep_session: str | None) -> None:
        user = await self.get_user(user_id)
        if not await passwords.verify_password(user.password_hash, current):
            raise Forbidden("the current password is wrong", reason_code=ReasonCode.LOGIN_FAILED)
        await self.set_password(user, new, keep_session=keep_session, field="new_password")

    async def set_password(
        self, user: User, new: str, keep_session: str | None = None, field: str = "password"
    ) -> None:
        passwords.check_policy(
            new, min_length=self.settings.password_min_length, email=user.email, field=field
        )
        new_hash = await passwords.hash_password(new)
        async with self.db.transaction() as session:
            await session.execute(
                update(User).where(User.id == user.id).values(password_hash=new_hash, updated_at=utc_now())
            )
            families = await self._revoke_sessions(session, user.id, keep_family=keep_session)
        await self._user_changed(user.id)
        await self._sessions_revoked(families)

    # -- sessions -------------------------------------------------------------------------------------------

    async def login(self, email: str, password: str) -> tuple[User, TokenPair]:
        user = await self.find_user_by_email(email)
        if (
            not await passwords.verify_password(user.password_hash if user else None, password)
            or user is None
        ):
            raise NotAuthenticated("wrong email or password", reason_code=ReasonCode.LOGIN_FAILED)
        if not user.is_active:
            raise NotAuthenticated("this account is disabled", reason_code=ReasonCode.ACCOUNT_DISABLED)
        return user, await self._issue(user.id, family_id=tokens.new_id())

    async def refresh(self, refresh_token: str) -> TokenPair:
        token_hash = tokens.digest(refresh_token)
        now = utc_now()
        next_refresh = tokens.new_refresh_token()
        async with self.db.transaction() as session:
            stored = await session.scalar(select(RefreshToken).where(RefreshToken.token_hash == token_hash))
            if stored is None:
                raise NotAuthenticated("unknown refresh token", reason_code=ReasonCode.AUTH_INVALID)
            if stored.used_at is not None or stored.revoked_at is not None:
                reused = True
            else:
                # Conditional update: of two concurrent refreshes with one token, exactly one wins.
                claimed = await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
                    .values(used_at=now)
                )
                reused = claimed.rowcount == 0  # type: ignore[attr-defined]
            if reused:
                await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == stored.family_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
            else:
                # Checked and issued in the claiming transaction (raising rolls the claim back): a successor
                # stored after it would escape the family revocation of a concurrent reuse of this token.
                if as_utc(stored.expires_at) <= now:
                    raise NotAuthenticated(
                        "the refresh token has expired", reason_code=ReasonCode.AUTH_EXPIRED
                    )
                user = await session.get(User, stored.user_id)
                if user is None or not user.is_active:
                    raise NotAuthenticated(
                        "this account is disabled", reason_code=ReasonCode.ACCOUNT_DISABLED
                    )
                session.add(self._refresh_row(stored.user_id, stored.family_id, next_refresh, now))
        if reused:
            await self._sessions_revoked([stored.family_id])
            log.warning("refresh token reused; session revoked", family=stored.family_id)
            raise NotAuthenticated(
                "this refresh token was already used; the session is revoked",
                reason_code=ReasonCode.REFRESH_REUSED,
            )
        return self._pair(stored.user_id, stored.family_id, next_refresh)

    async def logout(self, refresh_token: str | None, session_id: str | None, user_id: str) -> None:
        async with self.db.transaction() as session:
            family = session_id
            if refresh_token:
                stored = await session.scalar(
                    select(RefreshToken).where(RefreshToken.token_hash == tokens.digest(refresh_token))
                )
                if stored is None or stored.user_id != user_id:
                    raise NotFound("no such session")
                family = stored.family_id
            if family:
                await session.execute(
                    update(RefreshToken)
                    .where(RefreshToken.family_id == family, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=utc_now())
                )
        if family:
            await self._sessions_revoked([family])

    async def _issue(self, user_id: str, family_id: str) -> TokenPair:
        refresh = tokens.new_refresh_token()
        async with self.db.transaction() as session:
            session.add(self._refresh_row(user_id, family_id, refresh, utc_now()))
        return self._pair(user_id, family_id, refresh)

    def _refresh_row(self, user_id: str, family_id: str, refresh: str, now: datetime) -> RefreshToken:
        return RefreshToken(
            id=tokens.new_id(),
            user_id=user_id,
            family_id=family_id,
            token_hash=tokens.digest(refresh),
            created_at=now,
            expires_at=now + timedelta(days=self.settings.refresh_token_ttl_days),
        )

    def _pair(self, user_id: str, family_id: str, refresh: str) -> TokenPair:
        access, _ = tokens.issue_access_token(
            self.secret_key, user_id, family_id, self.settings.access_token_ttl_seconds
        )
        return TokenPair(
            access_token=access, expires_in=self.settings.access_token_ttl_seconds, refresh_token=refresh
        )

    async def _revoke_sessions(self, session: Any, user_id: str, keep_family: str | None = None) -> list[str]:
        """Revoke the user's login sessions (all, or all but one); return the revoked families."""
        live = [RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)]
        if keep_family:
            live.append(RefreshToken.family_id != keep_family)
        families = list((await session.scalars(select(RefreshToken.family_id).where(*live).distinct())).all())
        await session.execute(update(RefreshToken).where(*live).values(revoked_at=utc_now()))
        return families

    # -- API keys -------------------------------------------------------------------------------------------

    async def create_key(
        self,
        owner_id: str,
        name: str,
        scopes: list[str],
        *,
        expires_at: datetime | None = None,
        rate_limit: str | None = None,
        created_by: str | None = None,
        models: list[str] | None = None,
        secret: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Make a key. ``secret`` imports an existing one (say, keys clients already hold when moving
        from another gateway); otherwise a new ``aig_`` secret is generated."""
        owner = await self.get_user(owner_id)
        if secret is not None and (len(secret) < 12 or len(secret) > 200 or tokens.looks_like_jwt(secret)):
            raise ValidationFailed(
                "an imported key must be 12 to 200 characters and not look like a JWT",
                details=[{"field": "secret", "message": "unusable"}],
            )
        if "admin" in scopes and owner.role != "admin":
            raise Forbidden("only an admin's key can have the admin scope", reason_code=ReasonCode.FORBIDDEN)
        if expires_at is not None and as_utc(expires_at) <= utc_now():
            raise ValidationFailed(
                "expires_at must be in the future",
                details=[{"field": "body.expires_at", "message": "in the past"}],
            )
        secret = secret or tokens.new_api_key()
        key = ApiKey(
            id=tokens.new_id(),
            user_id=owner_id,
            name=name,
            prefix=secret[:12],
            key_hash=tokens.digest(secret),
            scopes=orjson.dumps(sorted(set(scopes))).decode(),
            models=None if models is None else orjson.dumps(sorted(set(models))).decode(),
            rate_limit=rate_limit,
            created_at=utc_now(),
            expires_at=expires_at,
            created_by=created_by,
        )
        async with self.db.transaction() as session:
            session.add(key)
        return key, secret

    async def get_key(self, key_id: str, viewer: Principal) -> ApiKey:
        async with self.db.session() as session:
            key = await session.get(ApiKey, key_id)
        if key is None or (key.user_id != viewer.user_id and not viewer.is_admin):
            raise NotFound("no such key")  # another user's key is indistinguishable from none
        return key

    async def list_keys(
        self, owner_id: str | None, *, limit: int, cursor: str | None
    ) -> tuple[list[ApiKey], str | None]:
        query = select(ApiKey)
        if owner_id is not None:
            query = query.where(ApiKey.user_id == owner_id)
        if cursor:
            query = query.where(ApiKey.id > decode_cursor(cursor))
        async with self.db.session() as session:
            keys = list((await session.scalars(query.order_by(ApiKey.id).limit(limit + 1))).all())
        more = len(keys) > limit
        keys = keys[:limit]
        return keys, (encode_cursor(keys[-1].id) if more and keys else None)

    async def revoke_key(self, key_id: str, viewer: Principal) -> ApiKey:
        key = await self.get_key(key_id, viewer)
        if key.revoked_at is None:
            async with self.db.transaction() as session:
                await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(revoked_at=utc_now()))
            await self._keys_changed([key.key_hash])
        return await self.get_key(key_id, viewer)

    # -- resolving a credential -----------------------------------------------------------------------------

    async def authenticate(self, credential: str, before_lookup: Lookup | None = None) -> Principal:
        """Who ``credential`` is. ``before_lookup`` is awaited before the first database read (a cache
        miss), so callers can count the attempt against a limit first."""
        if tokens.looks_like_jwt(credential):
            claims = tokens.read_access_token(self.secret_key, credential)
            user = await self._user_state(claims.user_id, before_lookup)
            if user is None:
                raise NotAuthenticated("the account no longer exists", reason_code=ReasonCode.AUTH_REVOKED)
            self._require_active(user)
            if not await self._session_live(claims.session_id, before_lookup):
                raise NotAuthenticated("this session was signed out", reason_code=ReasonCode.AUTH_REVOKED)
            return Principal(
                user_id=claims.user_id,
                email=user["email"],
                role=user["role"],
                scopes=ALL_SCOPES if user["role"] == "admin" else ALL_SCOPES - {"admin"},
                via="session",
                session_id=claims.session_id,
            )
        # Anything else is an API key: ours start with aig_, imported ones may not.
        return await self._from_api_key(credential, before_lookup)

    async def _from_api_key(self, secret: str, before_lookup: Lookup | None = None) -> Principal:
        key_hash = tokens.digest(secret)
        resolved = self._resolved.get(key_hash)
        if resolved is not None:
            now = utc_now().timestamp()
            if now < resolved.valid_until:
                if resolved.expires_at is not None and resolved.expires_at <= now:
                    raise NotAuthenticated("this API key has expired", reason_code=ReasonCode.AUTH_EXPIRED)
                return resolved.principal
            self._resolved.pop(key_hash, None)
        forgotten = self._forgotten
        cache_key = f"apikey:{key_hash}"
        state = await self.cache.get(cache_key)
        if state is None:
            if before_lookup is not None:
                await before_lookup()
            async with self.db.session() as session:
                key = await session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
            if key is None:
                raise NotAuthenticated("invalid API key", reason_code=ReasonCode.AUTH_INVALID)
            state = {
                "id": key.id,
                "user_id": key.user_id,
                "scopes": orjson.loads(key.scopes),
                "models": _models(key.models),
                "rate_limit": key.rate_limit,
                "expires_at": as_utc(key.expires_at).timestamp() if key.expires_at else None,
                "revoked": key.revoked_at is not None,
                "until": utc_now().timestamp() + self.settings.auth_cache_ttl,
            }
            await self.cache.set(cache_key, state, ttl=self.settings.auth_cache_ttl)
        if state["revoked"]:
            raise NotAuthenticated("this API key was revoked", reason_code=ReasonCode.AUTH_REVOKED)
        if state["expires_at"] is not None and state["expires_at"] <= utc_now().timestamp():
            raise NotAuthenticated("this API key has expired", reason_code=ReasonCode.AUTH_EXPIRED)
        user = await self._user_state(state["user_id"], before_lookup)
        if user is None:
            raise NotAuthenticated("invalid API key", reason_code=ReasonCode.AUTH_INVALID)
        self._require_active(user)
        scopes = frozenset(state["scopes"])
        if user["role"] != "admin":
            scopes -= {"admin"}
        models = state.get("models")
        principal = Principal(
            user_id=state["user_id"],
            email=user["email"],
            role=user["role"],
            scopes=scopes,
            via="api_key",
            key_id=state["id"],
            rate_limit=state["rate_limit"],
            models=None if models is None else frozenset(models),
        )
        if forgotten == self._forgotten:
            if len(self._resolved) >= self._resolved_max:
                self._resolved.pop(next(iter(self._resolved)))
            until = min(state["until"], user["until"])
            self._resolved[key_hash] = _Resolved(principal, state["expires_at"], until)
        return principal

    async def _user_state(self, user_id: str, before_lookup: Lookup | None = None) -> dict[str, Any] | None:
        cache_key = f"user:{user_id}"
        state = await self.cache.get(cache_key)
        if state is None:
            if before_lookup is not None:
                await before_lookup()
            async with self.db.session() as session:
                user = await session.get(User, user_id)
            if user is None:
                return None
            state = {
                "email": user.email,
                "role": user.role,
                "active": user.is_active,
                "until": utc_now().timestamp() + self.settings.auth_cache_ttl,
            }
            await self.cache.set(cache_key, state, ttl=self.settings.auth_cache_ttl)
        return dict(state)

    async def _session_live(self, family_id: str, before_lookup: Lookup | None = None) -> bool:
        """An access token dies with its login session (logout, password change, reuse), not only at expiry."""
        cache_key = f"session:{family_id}"
        live = await self.cache.get(cache_key)
        if live is None:
            if before_lookup is not None:
                await before_lookup()
            async with self.db.session() as session:
                found = await session.scalar(
                    select(RefreshToken.id)
                    .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
                    .limit(1)
                )
            live = found is not None
            await self.cache.set(cache_key, live, ttl=self.settings.auth_cache_ttl)
        return bool(live)

    @staticmethod
    def _require_active(user: dict[str, Any]) -> None:
        if not user["active"]:
            raise NotAuthenticated("this account is disabled", reason_code=ReasonCode.ACCOUNT_DISABLED)
