"""Alembic environment. Migrations run on a connection handed over by ``aiguardian.core.migrate``."""

from __future__ import annotations

from alembic import context

from aiguardian.migrations.autogen import include_name
from aiguardian.models import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `aiguardian migrate`, which supplies the database connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
