"""The first admin: made on the first start with no admin, its one-time password shown once on the console."""

from __future__ import annotations

import secrets
import sys

from aiguardian.core.errors import Conflict
from aiguardian.identity.service import Identity


def one_time_password() -> str:
    return secrets.token_urlsafe(18) + "-1a"  # passes the policy whatever the random part holds


async def ensure_first_admin(identity: Identity) -> bool:
    """Create the first admin if there is none; print its credentials to the console (never to the log)."""
    if await identity.has_admin():
        return False
    password = one_time_password()
    email = identity.settings.first_admin_email
    try:
        await identity.create_user(email, password, "Administrator", role="admin")
    except Conflict:  # another worker made it a moment ago, or the email belongs to a member
        existing = await identity.find_user_by_email(email)
        if existing is not None and existing.role != "admin" and not await identity.has_admin():
            await identity.update_user(existing.id, role="admin")
            print(f"AIGuardian: {email} was made admin (no admin existed).", file=sys.stderr, flush=True)
        return False
    banner = (
        "\n"
        "  AIGuardian first start: an admin account was created.\n"
        f"    email:    {email}\n"
        f"    password: {password}\n"
        "  This password is shown once. Sign in and change it (POST /api/v1/auth/password),\n"
        "  or reset it any time with `aiguardian admin reset-password --email ...`.\n"
    )
    print(banner, file=sys.stderr, flush=True)
    return True
