"""Channel versions in a column of their own

A checkpoint's channel versions name the blobs that hold its channel
values. Kept in a JSON column rather than inside the serialized checkpoint,
they let a read join those blobs in its first statement (SQLite, PostgreSQL)
and let the delta-history walk read them without decoding checkpoints.
Rows written from this revision on also keep their small channel values
(and those values' versions) inside the checkpoint bytes instead of a blob
row each (`sqlsaver.codec.small`), and their id only in its column.

Upgrading touches no rows: rows written before keep their versions inside
the checkpoint bytes, and sqlsaver reads them from there (with one more
statement). Downgrading puts the versions back into the checkpoint bytes
of rows that moved them out (with their ids), and their small values into
blob rows, so that an older sqlsaver reads them whole.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from sqlsaver.dialects import BINARY, JSON_OBJECT, key_string
from sqlsaver.migrate import missing, present, schema

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Rows re-encoded per round when downgrading.
BATCH = 500

# The columns this revision reads and writes, as they are at this revision.
checkpoints = sa.Table(
    "sqlsaver_checkpoints",
    sa.MetaData(),
    sa.Column("thread_id", key_string(1020), primary_key=True),
    sa.Column("checkpoint_ns", key_string(1536), primary_key=True),
    sa.Column("checkpoint_id", key_string(150), primary_key=True),
    sa.Column("checkpoint_type", sa.String(64)),
    sa.Column("checkpoint", BINARY),
    sa.Column("channel_versions", JSON_OBJECT),
)
blobs = sa.Table(
    "sqlsaver_blobs",
    sa.MetaData(),
    sa.Column("thread_id", key_string(1020), primary_key=True),
    sa.Column("checkpoint_ns", key_string(1536), primary_key=True),
    sa.Column("channel", key_string(255), primary_key=True),
    sa.Column("version", key_string(64), primary_key=True),
    sa.Column("type", sa.String(64)),
    sa.Column("blob", BINARY),
)


# Only if not done yet: see `sqlsaver.migrate.missing`.
def upgrade() -> None:
    if missing("sqlsaver_checkpoints", column="channel_versions"):
        op.add_column(
            "sqlsaver_checkpoints",
            sa.Column("channel_versions", JSON_OBJECT, nullable=True),
            schema=schema(),
        )


def _versions_back_into_checkpoints() -> None:
    """Re-encode the checkpoint bytes of rows whose versions are in the
    column, with the versions inside, and store their small values as blob
    rows. The serializer is the one the saver used:
    ``sqlsaver.migrate.downgrade(..., serde=...)`` passes it here;
    LangGraph's default one otherwise."""
    serde = context.config.attributes.get("serde") or JsonPlusSerializer()
    conn = op.get_bind()
    key = (checkpoints.c.thread_id, checkpoints.c.checkpoint_ns, checkpoints.c.checkpoint_id)
    moved = checkpoints.c.channel_versions.is_not(None)
    while True:
        rows = conn.execute(
            sa.select(
                *key,
                checkpoints.c.checkpoint_type,
                checkpoints.c.checkpoint,
                checkpoints.c.channel_versions,
            )
            .where(moved)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            try:
                stored = serde.loads_typed((row.checkpoint_type, bytes(row.checkpoint)))
            except Exception as error:
                raise RuntimeError(
                    "sqlsaver cannot downgrade below revision 0004: checkpoint "
                    f"{row.checkpoint_id!r} of thread {row.thread_id!r} is stored as "
                    f"{row.checkpoint_type!r}, which this serializer cannot read. Downgrade "
                    "from Python with the saver's serializer: "
                    "sqlsaver.migrate.downgrade(engine, revision, serde=saver.serde)"
                ) from error
            versions = {**stored.get("channel_versions", {}), **row.channel_versions}
            stored["channel_versions"] = versions
            stored.setdefault("id", row.checkpoint_id)
            for channel, value in stored.pop("channel_values", {}).items():
                _store_blob(conn, serde, row, channel, str(versions[channel]), value)
            checkpoint_type, checkpoint = serde.dumps_typed(stored)
            conn.execute(
                sa.update(checkpoints)
                .where(*(column == value for column, value in zip(key, row[:3], strict=True)))
                .values(
                    checkpoint_type=checkpoint_type, checkpoint=checkpoint, channel_versions=None
                )
            )


def _store_blob(
    conn: sa.Connection, serde: Any, row: Any, channel: str, version: str, value: Any
) -> None:
    """A blob row for a value, unless one is stored (values are stored
    once per version)."""
    key = {
        "thread_id": row.thread_id,
        "checkpoint_ns": row.checkpoint_ns,
        "channel": channel,
        "version": version,
    }
    exists = sa.select(sa.literal(1)).where(*(blobs.c[k] == v for k, v in key.items()))
    if conn.execute(exists).first() is None:
        value_type, value_bytes = serde.dumps_typed(value)
        conn.execute(sa.insert(blobs).values(**key, type=value_type, blob=value_bytes))


def downgrade() -> None:
    if context.is_offline_mode():
        raise RuntimeError(
            "sqlsaver's downgrade below revision 0004 re-encodes stored checkpoints, "
            "which an SQL script cannot do: run it against the database"
        )
    if not present("sqlsaver_checkpoints", column="channel_versions"):
        return  # dropped by a downgrade interrupted before its version row
    _versions_back_into_checkpoints()
    with op.batch_alter_table("sqlsaver_checkpoints", schema=schema()) as batch:
        batch.drop_column("channel_versions")
