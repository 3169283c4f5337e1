"""AIGuardian: a self-hosted backend for AI applications."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aiguardian")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
