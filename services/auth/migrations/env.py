"""Alembic environment of the auth service: migrates services.auth.store's tables (the runtime's included) on the
connection services.runtime hands over."""

from services.auth.store import metadata
from services.runtime.migrations import run_env

run_env(metadata)
