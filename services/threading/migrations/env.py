"""Alembic environment of the threading service: migrates on the connection services.runtime hands over."""

from sqlalchemy import MetaData

from services.runtime.messaging_tables import add_runtime_tables
from services.runtime.migrations import run_env

target_metadata = MetaData()
add_runtime_tables(target_metadata)

run_env(target_metadata)
