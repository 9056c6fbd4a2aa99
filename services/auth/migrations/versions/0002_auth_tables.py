"""Auth tables: CRM users and their locations, mailboxes with sealed tokens, watch and refresh lease, connections
(one active per user and location) and OAuth states.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHEN = sa.DateTime(timezone=True)
_ACTIVE = sa.text("state IN ('CONNECTED', 'REAUTH_REQUIRED')")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("crm_email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "user_locations",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("location_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "location_id"),
    )
    op.create_table(
        "mailboxes",
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("refresh_token_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("refresh_token_key_version", sa.Integer(), nullable=True),
        sa.Column("access_token_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("access_token_key_version", sa.Integer(), nullable=True),
        sa.Column("access_token_expires_at", _WHEN, nullable=True),
        sa.Column("granted_scopes", sa.Text(), nullable=False),
        sa.Column("grant_failed_at", _WHEN, nullable=True),
        sa.Column("grant_failure", sa.Text(), nullable=False),
        sa.Column("watch_expires_at", _WHEN, nullable=True),
        sa.Column("watch_history_id", sa.BigInteger(), nullable=True),
        sa.Column("watch_error", sa.Text(), nullable=False),
        sa.Column("refresh_lease_owner", sa.String(length=128), nullable=True),
        sa.Column("refresh_lease_expires_at", _WHEN, nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.PrimaryKeyConstraint("mailbox_id"),
        sa.UniqueConstraint("email"),
    )
    op.create_table(
        "connections",
        sa.Column("connection_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("location_id", sa.String(length=128), nullable=False),
        sa.Column("mailbox_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("start_history_id", sa.BigInteger(), nullable=False),
        sa.Column("start_time", _WHEN, nullable=False),
        sa.Column("state_change_time", _WHEN, nullable=False),
        sa.Column("replaced_by_connection_id", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["mailbox_id"], ["mailboxes.mailbox_id"]),
        sa.PrimaryKeyConstraint("connection_id"),
    )
    op.create_index("ix_connections_mailbox", "connections", ["mailbox_id"])
    op.create_index("ix_connections_location", "connections", ["location_id"])
    # One active connection per (user, location), enforced by the database on both dialects.
    op.create_index(
        "uq_connections_active_user_location",
        "connections",
        ["user_id", "location_id"],
        unique=True,
        sqlite_where=_ACTIVE,
        postgresql_where=_ACTIVE,
    )
    op.create_table(
        "oauth_states",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("location_id", sa.String(length=128), nullable=False),
        sa.Column("redirect_uri", sa.Text(), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("expires_at", _WHEN, nullable=False),
        sa.Column("used_at", _WHEN, nullable=True),
        sa.Column("return_url", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("oauth_states")
    op.drop_index("uq_connections_active_user_location", table_name="connections")
    op.drop_index("ix_connections_location", table_name="connections")
    op.drop_index("ix_connections_mailbox", table_name="connections")
    op.drop_table("connections")
    op.drop_table("mailboxes")
    op.drop_table("user_locations")
    op.drop_table("users")
