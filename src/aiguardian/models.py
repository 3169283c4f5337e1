"""Every feature's tables, gathered for Alembic. Features never import each other's tables."""

from aiguardian.audit.models import AuditRecord
from aiguardian.content.models import Post, PostTag
from aiguardian.core.db import Base
from aiguardian.identity.models import ApiKey, RefreshToken, User

metadata = Base.metadata

__all__ = ["ApiKey", "AuditRecord", "Post", "PostTag", "RefreshToken", "User", "metadata"]
