"""Every feature's tables, gathered for Alembic. Features never import each other's tables."""

from aiguardian.audit.models import AuditRecord
from aiguardian.content.models import Post, PostTag
from aiguardian.conversations.models import Conversation, Message
from aiguardian.core.db import Base
from aiguardian.gateway.models import ManagedDeployment
from aiguardian.identity.models import ApiKey, RefreshToken, User
from aiguardian.usage.models import Budget, BudgetCounter, UsageRecord

metadata = Base.metadata

__all__ = [
    "ApiKey",
    "AuditRecord",
    "Budget",
    "BudgetCounter",
    "Conversation",
    "ManagedDeployment",
    "Message",
    "Post",
    "PostTag",
    "RefreshToken",
    "UsageRecord",
    "User",
    "metadata",
]
