"""AIGuardian: a self-hosted backend for AI applications."""

from __future__ import annotations

from functools import cache


def __getattr__(name: str) -> str:
    # Read on first use: importlib.metadata costs every command tens of milliseconds of start-up.
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiguardian")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+unknown"
