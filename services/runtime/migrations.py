"""Alembic, driven programmatically: one migrations folder per service, no alembic.ini.

A service's `migrations/env.py` is three lines that call `run_env(target_metadata)`. `revision_status` tells a
service that does not migrate itself (a cluster runs a migration Job) whether its database is ready for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection


def alembic_config(
    migrations_dir: Path, connection: Connection | None = None, schema: str | None = None
) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    return config


def upgrade_to_head(connection: Connection, migrations_dir: Path, schema: str | None) -> None:
    command.upgrade(alembic_config(migrations_dir, connection, schema), "head")


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's env.py: migrate on the connection the runtime handed over."""
    connection: Any = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through services.runtime.db.migrate (or `python -m services.<svc> migrate`)"
        )
    schema = context.config.attributes.get("schema")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=schema,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


@dataclass(frozen=True)
class RevisionStatus:
    """Where a service's database stands against the migrations this code ships."""

    current: tuple[str, ...]
    head: str
    known: frozenset[str]

    @property
    def at_head(self) -> bool:
        return self.current == (self.head,)

    @property
    def ahead(self) -> bool:
        """The database carries a revision this code does not know: a newer release migrated it (expand/contract
        keeps the older code working during a rollout or a rollback)."""
        return bool(self.current) and any(revision not in self.known for revision in self.current)

    @property
    def usable(self) -> bool:
        return self.at_head or self.ahead

    def describe(self) -> str:
        current = ", ".join(self.current) or "empty (no migrations applied)"
        return f"database at revision {current}; this code needs {self.head}"


def revision_status(connection: Connection, migrations_dir: Path, schema: str | None) -> RevisionStatus:
    """Reads the database's Alembic revision (in `schema` on PostgreSQL) and this code's head; changes nothing."""
    script = ScriptDirectory.from_config(alembic_config(migrations_dir))
    heads = script.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"{migrations_dir} has {len(heads)} heads; merge them into one")
    migration_context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    current = tuple(sorted(migration_context.get_current_heads()))
    known = frozenset(revision.revision for revision in script.walk_revisions())
    return RevisionStatus(current=current, head=heads[0], known=known)
