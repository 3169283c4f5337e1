"""Access tokens (JWT, HS256 only) and opaque secrets (refresh tokens, API keys)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

import jwt

from aiguardian.core.clock import utc_now
from aiguardian.core.errors import NotAuthenticated, ReasonCode

ALGORITHM = "HS256"
ISSUER = "aiguardian"
API_KEY_PREFIX = "aig_"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    session_id: str
    expires_at: int


def issue_access_token(secret: str, user_id: str, session_id: str, ttl_seconds: int) -> tuple[str, int]:
    now = utc_now()
    expires = now + timedelta(seconds=ttl_seconds)
    claims = {
        "sub": user_id,
        "sid": session_id,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "iss": ISSUER,
        "typ": "access",
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), int(expires.timestamp())


def read_access_token(secret: str, token: str) -> AccessClaims:
    """Only HS256 with our key is accepted: ``alg: none`` and any other algorithm are refused."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated("the access token has expired", reason_code=ReasonCode.AUTH_EXPIRED) from None
    except jwt.InvalidTokenError:
        raise NotAuthenticated("invalid access token", reason_code=ReasonCode.AUTH_INVALID) from None
    if claims.get("typ") != "access" or not isinstance(claims.get("sub"), str):
        raise NotAuthenticated("invalid access token", reason_code=ReasonCode.AUTH_INVALID)
    return AccessClaims(
        user_id=claims["sub"], session_id=str(claims.get("sid", "")), expires_at=claims["exp"]
    )


def looks_like_jwt(credential: str) -> bool:
    return credential.count(".") == 2 and not credential.startswith(API_KEY_PREFIX)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_refresh_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def digest(secret_value: str) -> str:
    """SHA-256 of a random secret (256 bits of entropy): a slow hash would add nothing but latency."""
    return hashlib.sha256(secret_value.encode()).hexdigest()


def new_id() -> str:
    return uuid.uuid4().hex
