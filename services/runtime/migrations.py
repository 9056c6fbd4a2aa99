"""Alembic, driven programmatically: one migrations folder per service, no alembic.ini.

A service's `migrations/env.py` is three lines that call `run_env(target_metadata)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
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
