"""Alembic environment of the outbound service: migrates services.outbound.store's tables (the runtime's and the
send ledger's included) on the connection services.runtime hands over."""

from services.outbound.store import metadata
from services.runtime.migrations import run_env

run_env(metadata)
