"""guard verdicts in the audit log

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, and hashed only when set: rows written before this revision still verify.
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("guards", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("guards")
