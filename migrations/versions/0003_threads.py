"""Threads table, for thread-level TTL

One row per thread that a TTL applies to: when it expires, and its own TTL
when it has one. Threads written before this revision have no row and never
expire until their next write.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sqlsaver.dialects import key_string

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sqlsaver_threads",
        sa.Column("thread_id", key_string(1020), primary_key=True),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("ttl_minutes", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", name="pk_sqlsaver_threads"),
    )
    op.create_index("ix_sqlsaver_threads_expires_at", "sqlsaver_threads", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sqlsaver_threads_expires_at", table_name="sqlsaver_threads")
    op.drop_table("sqlsaver_threads")
