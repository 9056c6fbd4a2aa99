"""Each service's Alembic migrations apply on SQLite and PostgreSQL, and again without harm; and
`python -m services.<svc> migrate` applies them on its own."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from services.runtime.db import migrate, normalize_url, open_database

SERVICES = ["auth", "ingest", "threading", "outbound"]
RUNTIME_TABLES = {"outbox", "processed_messages", "dead_letters"}


def tables_of(database_target: Any) -> set[str]:
    sync_url = normalize_url(database_target.url).replace("+aiosqlite", "")
    engine = sqlalchemy.create_engine(sync_url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names(schema=database_target.schema))
    finally:
        engine.dispose()


def migrations_dir(service: str) -> Path:
    return Path(importlib.import_module(f"services.{service}.app").MIGRATIONS_DIR)


@pytest.mark.parametrize("service", SERVICES)
async def test_service_migrations_apply_and_reapply(service: str, database_target: Any) -> None:
    database = open_database(database_target.url, schema=database_target.schema)
    try:
        await migrate(database, migrations_dir(service))
        tables = tables_of(database_target)
        assert RUNTIME_TABLES | {"alembic_version"} <= tables

        await migrate(database, migrations_dir(service))
        assert tables_of(database_target) == tables
    finally:
        await database.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_service_has_one_migration_head(service: str) -> None:
    from alembic.script import ScriptDirectory

    from services.runtime.migrations import alembic_config

    heads = ScriptDirectory.from_config(alembic_config(migrations_dir(service))).get_heads()
    assert len(heads) == 1, heads


def test_the_migrate_command_applies_migrations_and_exits(database_target: Any, tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAILSYNC_")}
    env.update(database_target.env("MAILSYNC_THREADING_"))
    env["MAILSYNC_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "services.threading", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert RUNTIME_TABLES <= tables_of(database_target)
