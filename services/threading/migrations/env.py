"""Alembic environment of the threading service: migrates on the connection services.runtime hands over."""

from services.runtime.migrations import run_env
from services.threading.store.models import metadata

# The threading models plus the runtime's tables (outbox, processed messages, dead letters).
target_metadata = metadata

run_env(target_metadata)
