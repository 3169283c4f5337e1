"""What autogenerate compares: the ORM metadata against the database, minus what the ORM does not own.

A feature lists database objects that only its migrations make (per-database search structures, say) in
``metadata.info["unmanaged"]`` as ``(type, name)`` pairs, columns named ``table.column``.
"""

from __future__ import annotations

from alembic.runtime.environment import NameFilterParentNames, NameFilterType

from aiguardian.models import metadata


def include_name(name: str | None, type_: NameFilterType, parent_names: NameFilterParentNames) -> bool:
    unmanaged: set[tuple[str, str]] = metadata.info.get("unmanaged", set())
    key = f"{parent_names.get('table_name')}.{name}" if type_ == "column" else str(name)
    return (type_, key) not in unmanaged
