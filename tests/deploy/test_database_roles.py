"""The per-service database roles of docs/operations.md, created by deploy/postgres/service-roles.sql on a real
PostgreSQL: the migration Job migrates as the schema's owner, the service then serves as its own role (reads and
writes rows, migrate_on_start=false), and that role cannot change a table (the negative control)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from services.runtime.db import normalize_url
from services.runtime.service import open_database_ready
from services.threading.app import MIGRATIONS_DIR, build
from services.threading.settings import ThreadingSettings
from services.threading.store.contacts import ContactEmail, ContactRecord, upsert_contact
from tests.fixtures.databases import POSTGRES_URL_VARIABLE, DatabaseTarget, postgres_url
from tests.fixtures.services import service_settings
from tests.fixtures.threading_messages import T0

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "service-roles.sql"

pytestmark = pytest.mark.skipif(
    postgres_url() is None, reason=f"PostgreSQL roles: set {POSTGRES_URL_VARIABLE} (CI does)"
)


def statements(schema: str, owner: str, app: str) -> list[str]:
    text = ROLES_SQL.read_text().format(
        schema=schema, owner=owner, app=app, owner_password="owner-secret", app_password="app-secret"
    )
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in body.split(";") if statement.strip()]


@pytest.fixture
def service_roles() -> Iterator[tuple[str, str, str]]:
    url = postgres_url()
    assert url is not None
    name = f"roles_{uuid.uuid4().hex[:10]}"
    schema, owner, app = name, f"{name}_owner", f"{name}_app"
    admin = sqlalchemy.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for statement in statements(schema, owner, app):
                connection.execute(sqlalchemy.text(statement))
        yield schema, owner, app
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            for role in (app, owner):
                connection.execute(sqlalchemy.text(f"DROP OWNED BY {role}"))
                connection.execute(sqlalchemy.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


def url_as(role: str) -> str:
    url = postgres_url()
    assert url is not None
    return make_url(normalize_url(url)).set(username=role, password="").render_as_string(hide_password=False)


async def test_the_job_migrates_as_the_owner_and_the_service_serves_as_its_own_role(
    service_roles: tuple[str, str, str],
    nats_server: Any,
    token_keys_value: str,
    tmp_path: Path,
    run_service_in_process: Any,
) -> None:
    schema, owner, app = service_roles
    job = ThreadingSettings.load(database_url=url_as(owner), database_schema=schema)
    migrated = await open_database_ready(job, MIGRATIONS_DIR, migrate_now=True)
    await migrated.dispose()

    settings = service_settings(
        ThreadingSettings,
        nats_url=nats_server.url,
        database=DatabaseTarget("postgresql", url_as(app), schema),
        token_keys_value=token_keys_value,
        data_dir=tmp_path,
        migrate_on_start=False,
    )
    running = await run_service_in_process(settings, build)
    database = running.components.database
    async with database.write() as session:
        record = ContactRecord(
            "c-1", "loc-a", "", (ContactEmail("carol@example.com", True),), "u", T0, 1, False
        )
        await upsert_contact(session, record, now=T0)

    with pytest.raises(sqlalchemy.exc.ProgrammingError, match=r"(?i)permission denied"):
        async with database.write() as session:
            await session.execute(sqlalchemy.text(f"CREATE TABLE {schema}.intruder (x integer)"))
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match=r"(?i)must be owner"):
        async with database.write() as session:
            await session.execute(
                sqlalchemy.text(f"ALTER TABLE {schema}.alembic_version ADD COLUMN x integer")
            )
