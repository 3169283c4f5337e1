"""The data directory: where the embedded mode keeps its SQLite file and generated secrets."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from aiguardian.settings import Settings


@dataclass(frozen=True)
class Secrets:
    secret_key: str


def _read_or_create(path: Path, nbytes: int) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    value = secrets.token_urlsafe(nbytes)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it a moment ago
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def prepare_data_dir(settings: Settings) -> Secrets:
    """Create the data dir (private to this user) and the secret key unless settings give one."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.secret_key is not None:
        return Secrets(settings.secret_key.get_secret_value())
    secret_key, _ = _read_or_create(settings.data_dir / "secret_key", 48)
    return Secrets(secret_key)
