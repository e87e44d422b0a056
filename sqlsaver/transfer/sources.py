"""Where `copy_threads` reads from: a sqlsaver database, or the tables of
an official saver, told apart by the tables a database holds (`detect`).

Each source gives, a page at a time, the rows sqlsaver stores
(`sqlsaver.models`), ready to insert:

- **sqlsaver** (any dialect, at this sqlsaver's head): its four tables, row
  for row, bytes as they are.
- **PostgresSaver** (langgraph-checkpoint-postgres 2.x-3.x) and the MySQL
  saver (langgraph-checkpoint-mysql): checkpoints are JSON, with primitive
  channel values inline; the other values are blob rows, and pending
  writes are rows of serializer bytes. Blobs and writes are copied as
  their bytes; a checkpoint row is made by sqlsaver's codec from the JSON,
  so only the inline values are serialized (those sqlsaver keeps as blob
  rows: strings of more than 64 characters).
- **SqliteSaver** (langgraph-checkpoint-sqlite): each checkpoint is one
  serializer document that holds its channel values, so it is decoded and
  stored again as sqlsaver stores a `put`; writes are copied as bytes.

Pages are read by keyset (the rows after the last key seen), so memory is
one page whatever the size of a thread, and no cursor or transaction stays
open on the source between pages.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, CheckpointMetadata
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from sqlalchemy import Connection, Table, column, func, inspect, select, table, tuple_

from sqlsaver import codec, schemas
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import threads as T
from sqlsaver.models import writes as W

Kind = Literal["sqlsaver", "postgres", "mysql", "sqlite"]
KINDS: tuple[Kind, ...] = ("sqlsaver", "postgres", "mysql", "sqlite")
# What each kind is called in messages.
NAMES = {
    "sqlsaver": "sqlsaver",
    "postgres": "PostgresSaver (langgraph-checkpoint-postgres)",
    "mysql": "the MySQL saver (langgraph-checkpoint-mysql)",
    "sqlite": "SqliteSaver (langgraph-checkpoint-sqlite)",
}
# A page of rows to insert: each of sqlsaver's tables, and its rows.
Page = list[tuple[Table, list[dict[str, Any]]]]


class UnknownSourceError(ValueError):
    """The source database holds no checkpoints sqlsaver knows how to read."""


class DecodeError(ValueError):
    """A source's value that the serializer given cannot read."""


def _official(name: str, *columns: str) -> Any:
    return table(name, *(column(c) for c in columns))


# The official savers' tables, as far as a copy reads them.
OFFICIAL_CHECKPOINTS = _official(
    "checkpoints",
    "thread_id",
    "checkpoint_ns",
    "checkpoint_id",
    "parent_checkpoint_id",
    "type",
    "checkpoint",
    "metadata",
)
OFFICIAL_BLOBS = _official(
    "checkpoint_blobs", "thread_id", "checkpoint_ns", "channel", "version", "type", "blob"
)
_WRITE_COLUMNS = ("thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "task_path", "idx")
OFFICIAL_WRITES = _official("checkpoint_writes", *_WRITE_COLUMNS, "channel", "type", "blob")
SQLITE_WRITES = _official("writes", *_WRITE_COLUMNS, "channel", "type", "value")


def detect(conn: Connection) -> Kind:
    """The kind of checkpoints ``conn``'s database holds."""
    names = set(inspect(conn).get_table_names(schema=schemas.of(conn)))
    found: list[Kind] = []
    if C.name in names:
        found.append("sqlsaver")
    dialect = conn.dialect.name
    if {"checkpoints", "checkpoint_blobs", "checkpoint_writes"} <= names:
        found.append("postgres" if dialect == "postgresql" else "mysql")
    elif {"checkpoints", "writes"} <= names and dialect == "sqlite":
        found.append("sqlite")
    if len(found) == 1:
        return found[0]
    if found:
        raise UnknownSourceError(
            "the source database holds both "
            + " and ".join(NAMES[k] for k in found)
            + f" checkpoints: say which to copy with source_kind= (--source-kind): {found}"
        )
    raise UnknownSourceError(
        f"no checkpoints to copy in {conn.engine.url.render_as_string(hide_password=True)}: "
        "none of sqlsaver's tables (sqlsaver_checkpoints, ...), PostgresSaver's or the "
        "MySQL saver's (checkpoints, checkpoint_blobs, checkpoint_writes), or SqliteSaver's "
        f"(checkpoints, writes). Tables there: {sorted(names) or 'none'}"
    )


def official_writes(conn: Connection, kind: Kind) -> Any:
    """An official saver's writes table as this database has it: savers
    older than ``task_path`` (PostgresSaver 2.0, SqliteSaver 2.0) lack the
    column, and their writes are copied with an empty one. The deprecated
    ShallowPostgresSaver's tables (blobs with no version) are refused."""
    table = SQLITE_WRITES if kind == "sqlite" else OFFICIAL_WRITES
    found, schema = inspect(conn), schemas.of(conn)
    if kind != "sqlite":
        blob_columns = {c["name"] for c in found.get_columns(OFFICIAL_BLOBS.name, schema)}
        if "version" not in blob_columns:
            raise UnknownSourceError(
                "checkpoint_blobs has no version column: these are the tables of the "
                "deprecated ShallowPostgresSaver (or ShallowMySQLSaver), which keep only "
                "the latest checkpoint and which copy does not read"
            )
    if "task_path" in {c["name"] for c in found.get_columns(table.name, schema)}:
        return table
    return _official(table.name, *(c.name for c in table.columns if c.name != "task_path"))


@dataclass
class Source:
    """Reads one kind of checkpoints (`detect`) with ``serde``, the
    serializer they were written with; an official saver's from
    ``writes`` (`official_writes`)."""

    kind: Kind
    serde: SerializerProtocol
    page_size: int = 500
    writes: Any = None

    @property
    def _checkpoints(self) -> Any:
        return C if self.kind == "sqlsaver" else OFFICIAL_CHECKPOINTS

    @property
    def _writes(self) -> Any:
        if self.kind == "sqlsaver":
            return W
        return self.writes if self.writes is not None else OFFICIAL_WRITES

    def thread_ids(self, conn: Connection, after: str | None) -> list[str]:
        """The next page of thread ids, in order, after ``after``."""
        ids = self._checkpoints.c.thread_id
        query = select(ids).distinct().order_by(ids).limit(self.page_size)
        if after is not None:
            query = query.where(ids > after)
        return list(conn.scalars(query))

    def total(self, conn: Connection, thread_ids: Sequence[str] | None) -> int:
        """Checkpoints in all (or these) threads: what a progress bar counts."""
        c = self._checkpoints
        query = select(func.count()).select_from(c)
        if thread_ids is not None:
            query = query.where(c.c.thread_id.in_(list(thread_ids)))
        return conn.scalar(query) or 0

    def counts(self, conn: Connection, thread_id: str) -> tuple[int, int]:
        """The thread's checkpoints and pending writes."""
        return count_rows(conn, self._checkpoints, self._writes, thread_id)

    def pages(self, conn: Connection, thread_id: str) -> Iterator[Page]:
        """The thread's rows as sqlsaver stores them, a page at a time:
        values, writes and the TTL row before the checkpoints, which come
        last (a thread whose checkpoints are all there is whole)."""
        if self.kind == "sqlsaver":
            for source in (B, W, T, C):
                for rows in _keyset(conn, source, thread_id, self.page_size):
                    yield [(source, [dict(r._mapping) for r in rows])]
            return
        if self.kind != "sqlite":
            for rows in _keyset(conn, OFFICIAL_BLOBS, thread_id, self.page_size):
                yield [
                    (B, [_blob_row(r) for r in rows if r.type != "empty" and r.blob is not None])
                ]
        for rows in _keyset(conn, self._writes, thread_id, self.page_size):
            yield [(W, [_write_row(r) for r in rows])]
        for rows in _keyset(conn, OFFICIAL_CHECKPOINTS, thread_id, self.page_size):
            yield self._checkpoint_page(conn, rows)

    def _checkpoint_page(self, conn: Connection, rows: Sequence[Any]) -> Page:
        checkpoints, values = [], {}
        for r in rows:
            checkpoint, metadata = self.decoded(conn, r)
            config: RunnableConfig = {
                "configurable": {
                    "thread_id": r.thread_id,
                    "checkpoint_ns": r.checkpoint_ns,
                    "checkpoint_id": r.parent_checkpoint_id,
                }
            }
            here = _stored_here(checkpoint)
            row, blobs = codec.put_rows(self.serde, config, checkpoint, metadata, here)
            checkpoints.append(row)
            for blob in blobs:  # a value is stored once, however many use it
                values[(blob["checkpoint_ns"], blob["channel"], blob["version"])] = blob
        return [(B, list(values.values())), (C, checkpoints)]

    def decoded(self, conn: Connection, r: Any) -> tuple[Checkpoint, CheckpointMetadata]:
        """An official checkpoint row's checkpoint (with the values it
        holds itself) and metadata."""
        if self.kind == "sqlite":
            try:
                checkpoint = self.serde.loads_typed((r.type, r.checkpoint))
            except Exception as error:
                raise DecodeError(f"{type(error).__name__}: {error}") from error
        else:
            checkpoint = _json(r.checkpoint)
            values = dict(checkpoint.get("channel_values") or {})
            # PostgresSaver keeps a DeltaChannel's snapshot as a blob row and
            # marks it inline with `true`: the blob row is the value.
            versions = checkpoint["channel_versions"]
            for channel in [ch for ch, v in values.items() if v is True and ch in versions]:
                if _blob(conn, r.thread_id, r.checkpoint_ns, channel, versions[channel]):
                    del values[channel]
            checkpoint["channel_values"] = values
        return checkpoint, _json(r.metadata) if r.metadata is not None else {}

    def holds(self, conn: Connection, thread_id: str, ns: str, checkpoint_id: str) -> bool:
        """Whether the source has this checkpoint."""
        c = self._checkpoints
        at = (c.c.thread_id == thread_id) & (c.c.checkpoint_ns == ns)
        found = conn.execute(
            select(c.c.checkpoint_id).where(at, c.c.checkpoint_id == checkpoint_id)
        )
        return found.first() is not None

    def probe(self, conn: Connection, thread_id: str) -> None:
        """Decode one stored value of the thread (a pending write, a blob,
        or SqliteSaver's first checkpoint) with the serializer given, before
        anything is written: `DecodeError` if it cannot."""
        w = self._writes
        value = w.c.value if self.kind == "sqlite" else w.c.blob
        samples = [select(w.c.type, value).where(w.c.thread_id == thread_id).limit(1)]
        if self.kind == "sqlite":
            c = OFFICIAL_CHECKPOINTS
            samples.append(
                select(c.c.type, c.c.checkpoint).where(c.c.thread_id == thread_id).limit(1)
            )
        else:
            b = B if self.kind == "sqlsaver" else OFFICIAL_BLOBS
            stored = (b.c.thread_id == thread_id) & (b.c.type != "empty")
            samples.append(select(b.c.type, b.c.blob).where(stored).limit(1))
        for sample in samples:
            row = conn.execute(sample).first()
            if row is not None and row[1] is not None:
                try:
                    self.serde.loads_typed((row[0], bytes(row[1])))
                except Exception as error:
                    raise DecodeError(f"{type(error).__name__}: {error}") from error

    def namespaces(self, conn: Connection, thread_id: str) -> list[str]:
        """The thread's checkpoint namespaces."""
        c = self._checkpoints
        return list(
            conn.scalars(select(c.c.checkpoint_ns).where(c.c.thread_id == thread_id).distinct())
        )

    def latest(self, conn: Connection, thread_id: str, ns: str) -> Latest:
        """An official source's latest checkpoint of a namespace: its id, its
        channel values (decoded) and its pending writes (decoded), as the
        source holds them; what a copy is checked against. (A sqlsaver
        source is read by a `SQLSaver` on it instead.)"""
        c, w = OFFICIAL_CHECKPOINTS, self._writes
        at = (c.c.thread_id == thread_id) & (c.c.checkpoint_ns == ns)
        r = conn.execute(select(c).where(at).order_by(c.c.checkpoint_id.desc()).limit(1)).one()
        checkpoint, _ = self.decoded(conn, r)
        values = dict(checkpoint["channel_values"])
        if self.kind != "sqlite":  # the blob rows of its versions
            for channel, version in checkpoint["channel_versions"].items():
                if channel in values:
                    continue
                found = _blob(conn, thread_id, ns, channel, version)
                if found is not None:
                    values[channel] = self.serde.loads_typed((found.type, bytes(found.blob)))
        value = w.c.value if self.kind == "sqlite" else w.c.blob
        writes = conn.execute(
            select(w.c.task_id, w.c.channel, w.c.type, value).where(
                w.c.thread_id == thread_id,
                w.c.checkpoint_ns == ns,
                w.c.checkpoint_id == r.checkpoint_id,
            )
        ).all()
        pending = [(t, ch, self.serde.loads_typed((ty, bytes(v)))) for t, ch, ty, v in writes]
        return Latest(r.checkpoint_id, values, pending)


@dataclass
class Latest:
    """A namespace's latest checkpoint, as `copy_threads` compares it."""

    checkpoint_id: str
    values: dict[str, Any]
    pending: list[tuple[str, str, Any]]

    def same(self, other: Latest) -> bool:
        def order(p: tuple[str, str, Any]) -> tuple[str, str, str]:
            return p[0], p[1], repr(p[2])

        # SqliteSaver keeps a DeltaChannel's snapshot in the checkpoint that
        # took it only; sqlsaver keys it by the channel's version, so the
        # checkpoints after it, at that version, read it back too.
        extra = [v for ch, v in other.values.items() if ch not in self.values]
        return (
            self.checkpoint_id == other.checkpoint_id
            and self.values == {ch: other.values[ch] for ch in self.values if ch in other.values}
            and self.values.keys() <= other.values.keys()
            and all(isinstance(v, _DeltaSnapshot) for v in extra)
            and sorted(self.pending, key=order) == sorted(other.pending, key=order)
        )


def _blob(conn: Connection, thread_id: str, ns: str, channel: str, version: Any) -> Any:
    """The blob row (type, blob) of a channel's version, if it holds a value."""
    b = OFFICIAL_BLOBS
    found = conn.execute(
        select(b.c.type, b.c.blob).where(
            b.c.thread_id == thread_id,
            b.c.checkpoint_ns == ns,
            b.c.channel == channel,
            b.c.version == str(version),
        )
    ).first()
    return found if found is not None and found.type != "empty" and found.blob is not None else None


def count_rows(conn: Connection, checkpoints: Any, writes: Any, thread_id: str) -> tuple[int, int]:
    count = select(func.count()).select_from(checkpoints)
    done = conn.scalar(count.where(checkpoints.c.thread_id == thread_id)) or 0
    count = select(func.count()).select_from(writes)
    return done, conn.scalar(count.where(writes.c.thread_id == thread_id)) or 0


def _keyset(conn: Connection, source: Any, thread_id: str, size: int) -> Iterator[Sequence[Any]]:
    """A thread's rows of ``source``, a page of ``size`` at a time, in the
    order of its key (the rows after the last key of the page before)."""
    key = _key(source)
    query = select(source).where(source.c.thread_id == thread_id).order_by(*key).limit(size)
    after: tuple[Any, ...] | None = None
    while True:
        page_query = query if after is None else query.where(tuple_(*key) > tuple_(*after))
        rows = conn.execute(page_query).all()
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = tuple(getattr(rows[-1], k.name) for k in key)


def _key(source: Any) -> list[Any]:
    if source is T:
        return [source.c.thread_id]
    names = {
        "checkpoints": ("checkpoint_ns", "checkpoint_id"),
        "checkpoint_blobs": ("checkpoint_ns", "channel", "version"),
        "blobs": ("checkpoint_ns", "channel", "version"),
        "checkpoint_writes": ("checkpoint_ns", "checkpoint_id", "task_id", "idx"),
        "writes": ("checkpoint_ns", "checkpoint_id", "task_id", "idx"),
    }[source.name.removeprefix("sqlsaver_")]
    return [source.c[n] for n in names]


def _blob_row(r: Any) -> dict[str, Any]:
    return {
        "thread_id": r.thread_id,
        "checkpoint_ns": r.checkpoint_ns,
        "channel": r.channel,
        "version": r.version,
        "type": r.type,
        "blob": bytes(r.blob),
    }


def _write_row(r: Any) -> dict[str, Any]:
    value = r.value if hasattr(r, "value") else r.blob
    return {
        "thread_id": r.thread_id,
        "checkpoint_ns": r.checkpoint_ns,
        "checkpoint_id": r.checkpoint_id,
        "task_id": r.task_id,
        "idx": r.idx,
        "task_path": getattr(r, "task_path", None) or "",  # none before task paths
        "channel": r.channel,
        "type": r.type,
        "blob": bytes(value) if value is not None else b"",
    }


def _stored_here(checkpoint: Checkpoint) -> dict[str, Any]:
    """The channels whose values a checkpoint row brings itself (as
    `new_versions` of a `put`): SqliteSaver's, all of them; the JSON
    savers', their inline values (the blob rows bring the rest)."""
    versions = checkpoint["channel_versions"]
    return {ch: versions[ch] for ch in checkpoint["channel_values"] if ch in versions}


def _json(value: Any) -> Any:
    """A JSON column's value: parsed by the driver, or its text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode()
    return json.loads(value) if isinstance(value, str) else dict(value)
