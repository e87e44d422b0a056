"""Declarative models of sqlsaver's three tables.

The Alembic revisions in ``migrations/`` create exactly these tables; the
test suite proves it by comparing a migrated database with this metadata.

Key columns are unbounded text on PostgreSQL and SQLite. On MySQL/MariaDB
they are byte-exact ``VARBINARY`` columns whose byte budgets keep every
primary key under InnoDB's 3072-byte limit (see `dialects.key_string`):

| column        | bytes | what fits                                     |
|---------------|-------|-----------------------------------------------|
| thread_id     | 1020  | 255 characters of any script (4 bytes each)   |
| checkpoint_ns | 1536  | ~30 nested subgraph levels of ``node:uuid``   |
| checkpoint_id | 150   | uuid6 ids (36) with room to spare             |
| task_id       | 150   | uuid5 ids (36) with room to spare             |
| channel       | 255   | channel (state key) names                     |
| version       | 64    | LangGraph's ``<32 digits>.<random>`` versions |
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Double, Index, Integer, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlsaver.dialects import BINARY, JSON_OBJECT, LONG_TEXT, key_string

# The byte budget of each key column on MySQL/MariaDB (see the module doc).
MYSQL_KEY_BYTES = {
    "thread_id": 1020,
    "checkpoint_ns": 1536,
    "checkpoint_id": 150,
    "task_id": 150,
    "channel": 255,
    "version": 64,
    "run_id": 255,
}
THREAD_ID = key_string(MYSQL_KEY_BYTES["thread_id"])
CHECKPOINT_NS = key_string(MYSQL_KEY_BYTES["checkpoint_ns"])
CHECKPOINT_ID = key_string(MYSQL_KEY_BYTES["checkpoint_id"])
TASK_ID = key_string(MYSQL_KEY_BYTES["task_id"])
CHANNEL = key_string(MYSQL_KEY_BYTES["channel"])
VERSION = key_string(MYSQL_KEY_BYTES["version"])
RUN_ID = key_string(MYSQL_KEY_BYTES["run_id"])
SERDE_TYPE = String(64)

# Stable constraint and index names on every dialect, so Alembic diffs are
# about real changes only.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of sqlsaver's tables (add ``Base.metadata`` to an
    app's Alembic ``target_metadata`` to manage them from the app)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class CheckpointModel(Base):
    """One checkpoint, without its channel values (those are blobs)."""

    __tablename__ = "sqlsaver_checkpoints"

    thread_id: Mapped[str] = mapped_column(THREAD_ID, primary_key=True)
    checkpoint_ns: Mapped[str] = mapped_column(CHECKPOINT_NS, primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(CHECKPOINT_ID, primary_key=True)
    parent_checkpoint_id: Mapped[str | None] = mapped_column(CHECKPOINT_ID)
    # metadata["run_id"], promoted so delete_for_runs is an index lookup.
    run_id: Mapped[str | None] = mapped_column(RUN_ID)
    checkpoint_type: Mapped[str] = mapped_column(SERDE_TYPE)
    # The checkpoint without its channel values (blobs) and, when they are
    # in `channel_versions`, without its channel versions.
    checkpoint: Mapped[bytes] = mapped_column(BINARY)
    # The exact metadata (serde bytes) and a filterable JSON copy of it.
    metadata_type: Mapped[str] = mapped_column(SERDE_TYPE)
    metadata_blob: Mapped[bytes] = mapped_column(BINARY)
    metadata_json: Mapped[dict[str, str]] = mapped_column(JSON_OBJECT)
    # {channel: version}: in a column of their own so that a read joins the
    # blobs it needs in the same statement (revision 0004). NULL in rows
    # written before, and where a version is not a JSON-safe string: then
    # the versions are in `checkpoint`, as before.
    channel_versions: Mapped[dict[str, str] | None] = mapped_column(JSON_OBJECT)

    __table_args__ = (
        Index(None, "run_id"),
        # list() across threads is ordered by checkpoint id (revision 0002).
        Index(None, "checkpoint_id"),
    )


class BlobModel(Base):
    """A channel value, stored once per (thread, namespace, channel, version)."""

    __tablename__ = "sqlsaver_blobs"

    thread_id: Mapped[str] = mapped_column(THREAD_ID, primary_key=True)
    checkpoint_ns: Mapped[str] = mapped_column(CHECKPOINT_NS, primary_key=True)
    channel: Mapped[str] = mapped_column(CHANNEL, primary_key=True)
    version: Mapped[str] = mapped_column(VERSION, primary_key=True)
    type: Mapped[str] = mapped_column(SERDE_TYPE)
    blob: Mapped[bytes] = mapped_column(BINARY)


class WriteModel(Base):
    """A pending write of a task, stored against the checkpoint it follows.

    No foreign key to checkpoints: LangGraph saves a step's writes from
    background threads, and they can commit before their checkpoint does.
    """

    __tablename__ = "sqlsaver_writes"

    thread_id: Mapped[str] = mapped_column(THREAD_ID, primary_key=True)
    checkpoint_ns: Mapped[str] = mapped_column(CHECKPOINT_NS, primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(CHECKPOINT_ID, primary_key=True)
    task_id: Mapped[str] = mapped_column(TASK_ID, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    task_path: Mapped[str] = mapped_column(LONG_TEXT)
    channel: Mapped[str] = mapped_column(CHANNEL)
    type: Mapped[str] = mapped_column(SERDE_TYPE)
    blob: Mapped[bytes] = mapped_column(BINARY)


class ThreadModel(Base):
    """Per-thread bookkeeping for TTL (revision 0003).

    Times are seconds since the epoch (UTC) from one clock, the database's
    by default; numbers rather than timestamps so that "now + ttl" is the
    same arithmetic on every database.
    """

    __tablename__ = "sqlsaver_threads"

    thread_id: Mapped[str] = mapped_column(THREAD_ID, primary_key=True)
    # When the thread expires; NULL: never (no TTL, or pinned).
    expires_at: Mapped[float | None] = mapped_column(Double)
    # The thread's own TTL in minutes; NULL: the saver's default; 0: never.
    ttl_minutes: Mapped[float | None] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)

    __table_args__ = (Index(None, "expires_at"),)


checkpoints = cast(Table, CheckpointModel.__table__)
blobs = cast(Table, BlobModel.__table__)
writes = cast(Table, WriteModel.__table__)
threads = cast(Table, ThreadModel.__table__)
