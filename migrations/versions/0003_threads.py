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
from sqlsaver.migrate import missing, present, primary_key_name, schema

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


INDEX = "ix_sqlsaver_threads_expires_at"


# Each step only if not done yet: see `sqlsaver.migrate.missing`.
def upgrade() -> None:
    if missing("sqlsaver_threads"):
        _create_threads()
    if missing("sqlsaver_threads", index=INDEX):
        op.create_index(INDEX, "sqlsaver_threads", ["expires_at"], schema=schema())


def _create_threads() -> None:
    op.create_table(
        "sqlsaver_threads",
        sa.Column("thread_id", key_string(1020), primary_key=True),
        sa.Column("expires_at", sa.Double(), nullable=True),
        sa.Column("ttl_minutes", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("thread_id", name=primary_key_name("pk_sqlsaver_threads")),
        schema=schema(),
    )


def downgrade() -> None:
    if present("sqlsaver_threads", index=INDEX):
        op.drop_index(INDEX, table_name="sqlsaver_threads", schema=schema())
    if present("sqlsaver_threads"):
        op.drop_table("sqlsaver_threads", schema=schema())
