"""Initial schema of the auth service: the messaging runtime's tables (outbox, processed messages, dead letters).

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

from alembic import op

from services.runtime.messaging_tables import create_runtime_tables, drop_runtime_tables

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_runtime_tables(op)


def downgrade() -> None:
    drop_runtime_tables(op)
