"""Index checkpoints by id, for list() across threads

`list(None, ...)` (every thread) and `list(before=...)` without a thread are
ordered by checkpoint id; without this index the database sorts the whole
table to return the newest few.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_sqlsaver_checkpoints_checkpoint_id", "sqlsaver_checkpoints", ["checkpoint_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_sqlsaver_checkpoints_checkpoint_id", table_name="sqlsaver_checkpoints")
