"""answer cache savings in the ledger, expiring budget reservations, cached deployments

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_ledger") as batch:
        batch.add_column(sa.Column("saved_tokens", sa.Integer(), nullable=False, server_default="0"))
        # nano-dollars (usage.models.Money)
        batch.add_column(sa.Column("saved_cost", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("budget_id", sa.String(32), nullable=False),
        sa.Column("window", sa.String(16), nullable=False),
        sa.Column("nanos", sa.BigInteger(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("trace_id", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["budget_id"],
            ["budgets.id"],
            name=op.f("fk_budget_reservations_budget_id_budgets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_reservations")),
    )
    for column in ("budget_id", "expires_at"):
        op.create_index(op.f(f"ix_budget_reservations_{column}"), "budget_reservations", [column])
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("cache", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("cache")
    op.drop_table("budget_reservations")
    with op.batch_alter_table("usage_ledger") as batch:
        batch.drop_column("saved_cost")
        batch.drop_column("saved_tokens")
