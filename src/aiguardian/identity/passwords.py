"""Password hashing (argon2id) and the password policy. Hashing runs in a thread: it is slow on purpose."""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from aiguardian.core.errors import ValidationFailed

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps a login for an unknown account as slow as one for a known account.
    Made on first use, not at import: hashing takes a tenth of a second and 64 MiB, in every process."""
    return _hasher.hash("aiguardian-timing-equaliser")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


def check_policy(
    password: str, *, min_length: int, email: str | None = None, field: str = "password"
) -> None:
    """Raise ``ValidationFailed`` naming the rule a new password breaks."""
    problems = []
    if len(password) < min_length:
        problems.append(f"at least {min_length} characters")
    if len(password) > 256:
        problems.append("at most 256 characters")
    if not any(c.isalpha() for c in password) or not any(not c.isalpha() for c in password):
        problems.append("both letters and digits or symbols")
    if email and password.lower() == email.lower():
        problems.append("not the email address")
    if problems:
        raise ValidationFailed(
            "password must have " + ", ".join(problems),
            details=[{"field": f"body.{field}", "message": "; ".join(problems), "type": "password_policy"}],
        )
