"""sqlsaver's tables: checkpoints, blobs, writes

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sqlsaver.dialects import BINARY, JSON_OBJECT, LONG_TEXT, key_string
from sqlsaver.migrate import missing, present, primary_key_name, schema

revision = "0001"
down_revision = None
branch_labels = ("sqlsaver",)
depends_on = None


def _key_columns(*names_and_bytes: tuple[str, int]) -> list[sa.Column]:
    return [sa.Column(name, key_string(size), primary_key=True) for name, size in names_and_bytes]


THREAD, NS = ("thread_id", 1020), ("checkpoint_ns", 1536)


# Each step only if not done yet: see `sqlsaver.migrate.missing`.
def upgrade() -> None:
    if missing("sqlsaver_checkpoints"):
        _create_checkpoints()
    if missing("sqlsaver_checkpoints", index="ix_sqlsaver_checkpoints_run_id"):
        op.create_index(
            "ix_sqlsaver_checkpoints_run_id", "sqlsaver_checkpoints", ["run_id"], schema=schema()
        )
    if missing("sqlsaver_blobs"):
        _create_blobs()
    if missing("sqlsaver_writes"):
        _create_writes()


def _create_checkpoints() -> None:
    op.create_table(
        "sqlsaver_checkpoints",
        *_key_columns(THREAD, NS, ("checkpoint_id", 150)),
        sa.Column("parent_checkpoint_id", key_string(150), nullable=True),
        sa.Column("run_id", key_string(255), nullable=True),
        sa.Column("checkpoint_type", sa.String(64), nullable=False),
        sa.Column("checkpoint", BINARY, nullable=False),
        sa.Column("metadata_type", sa.String(64), nullable=False),
        sa.Column("metadata_blob", BINARY, nullable=False),
        sa.Column("metadata_json", JSON_OBJECT, nullable=False),
        sa.PrimaryKeyConstraint(
            "thread_id",
            "checkpoint_ns",
            "checkpoint_id",
            name=primary_key_name("pk_sqlsaver_checkpoints"),
        ),
        schema=schema(),
    )


def _create_blobs() -> None:
    op.create_table(
        "sqlsaver_blobs",
        *_key_columns(THREAD, NS, ("channel", 255), ("version", 64)),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("blob", BINARY, nullable=False),
        sa.PrimaryKeyConstraint(
            "thread_id",
            "checkpoint_ns",
            "channel",
            "version",
            name=primary_key_name("pk_sqlsaver_blobs"),
        ),
        schema=schema(),
    )


def _create_writes() -> None:
    op.create_table(
        "sqlsaver_writes",
        *_key_columns(THREAD, NS, ("checkpoint_id", 150), ("task_id", 150)),
        sa.Column("idx", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("task_path", LONG_TEXT, nullable=False),
        sa.Column("channel", key_string(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("blob", BINARY, nullable=False),
        sa.PrimaryKeyConstraint(
            "thread_id",
            "checkpoint_ns",
            "checkpoint_id",
            "task_id",
            "idx",
            name=primary_key_name("pk_sqlsaver_writes"),
        ),
        schema=schema(),
    )


def downgrade() -> None:
    if present("sqlsaver_writes"):
        op.drop_table("sqlsaver_writes", schema=schema())
    if present("sqlsaver_blobs"):
        op.drop_table("sqlsaver_blobs", schema=schema())
    if present("sqlsaver_checkpoints", index="ix_sqlsaver_checkpoints_run_id"):
        op.drop_index(
            "ix_sqlsaver_checkpoints_run_id", table_name="sqlsaver_checkpoints", schema=schema()
        )
    if present("sqlsaver_checkpoints"):
        op.drop_table("sqlsaver_checkpoints", schema=schema())
