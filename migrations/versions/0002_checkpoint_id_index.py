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

from sqlsaver.migrate import missing, present, schema

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


INDEX = "ix_sqlsaver_checkpoints_checkpoint_id"


# Each step only if not done yet: see `sqlsaver.migrate.missing`.
def upgrade() -> None:
    if missing("sqlsaver_checkpoints", index=INDEX):
        op.create_index(INDEX, "sqlsaver_checkpoints", ["checkpoint_id"], schema=schema())


def downgrade() -> None:
    if present("sqlsaver_checkpoints", index=INDEX):
        op.drop_index(INDEX, table_name="sqlsaver_checkpoints", schema=schema())
