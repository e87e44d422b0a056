"""What a `put` or `put_writes` stores, and how (`store`)."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from sqlalchemy import Connection, Dialect, Insert, Table, bindparam

from sqlsaver import codec, dialects, galera, policies, schemas
from sqlsaver.codec import Address
from sqlsaver.execution import limits, transactions
from sqlsaver.execution.plan import Plan
from sqlsaver.execution.prepared import Prepared
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import writes as W
from sqlsaver.ops.lookups import Options
from sqlsaver.ops.maintain import prune_keep_latest

CHECKPOINT_UPDATE = (
    "checkpoint_type",
    "checkpoint",
    "metadata_type",
    "metadata_blob",
    "metadata_json",
    "run_id",
    "channel_versions",
)
WRITE_UPDATE = ("task_path", "channel", "type", "blob")


# An insert: the table, the columns a key conflict replaces (None: keep the
# stored row), and the rows.
Batch = tuple[Table, tuple[str, ...] | None, list[dict[str, Any]]]
_ROWS_OF_BATCH = operator.itemgetter(2)


def _insert_statement(dialect: Dialect, table: Table, updated: tuple[str, ...] | None) -> Any:
    """INSERT that keeps a stored row with the same key, or (``updated``)
    replaces those of its columns."""
    if updated is None:
        return dialects.insert_ignore(dialect, table)
    return dialects.upsert(dialect, table, updated)


@cache
def _insert(
    dialect: Dialect, schema: str | None, table: Table, updated: tuple[str, ...] | None = None
) -> Prepared:
    """`_insert_statement` of whole rows, one row per parameter set."""
    return Prepared(_insert_statement(dialect, table, updated), dialect, schema=schema)


Shape = tuple[tuple[Table, tuple[str, ...] | None, int], ...]


@lru_cache(maxsize=256)
def _row_slots(shape: Shape) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The parameter names of the rows of `shape` (table, update, row
    count), row after row: ``<n>_<i>_<column>`` for row ``i`` of insert
    ``n``, with the column each is for. Cached: formatting them costs more
    than the rest of a write's Python."""
    return tuple(
        tuple((c.name, f"{n}_{i}_{c.name}") for c in table.columns)
        for n, (table, _, count) in enumerate(shape)
        for i in range(count)
    )


@lru_cache(maxsize=256)
def _row_binding(shape: Shape) -> tuple[tuple[str, ...], tuple[Callable[[Any], Any], ...]]:
    """`_row_slots` flat, and for each row the getter of its values in that
    order: every parameter of the rows of `shape` named in C, not by a
    Python step per value."""
    slots = _row_slots(shape)
    names = tuple(name for row in slots for _, name in row)
    return names, tuple(operator.itemgetter(*(column for column, _ in row)) for row in slots)


@cache
def _sized_columns(table: Table) -> Callable[[Any], tuple[Any, ...]]:
    """The getter of a row's string and binary values (keys, serialized
    values), which make up its size."""
    return operator.itemgetter(
        *(c.name for c in table.columns if c.type.python_type in (str, bytes))
    )


def _inserts(dialect: Dialect, shape: Shape) -> list[Insert]:
    """The inserts of `shape`, each row's columns bound by `_row_slots`."""
    slots = iter(_row_slots(shape))
    inserts = []
    for table, updated, count in shape:
        rows = [
            {column: bindparam(slot, type_=table.c[column].type) for column, slot in next(slots)}
            for _ in range(count)
        ]
        inserts.append(_insert_statement(dialect, table, updated).values(rows))
    return inserts


@lru_cache(maxsize=256)  # a shape per row count: bounded
def _chained_insert(dialect: Dialect, schema: str | None, shape: Shape) -> Prepared:
    """The `_inserts` of `shape` as one statement (`dialects.chain` for
    more than one)."""
    inserts = _inserts(dialect, shape)
    statement = inserts[0] if len(inserts) == 1 else dialects.chain(dialect, inserts)
    return Prepared(statement, dialect, schema=schema)


@lru_cache(maxsize=256)
def _insert_script(
    dialect: Dialect, schema: str | None, shape: Shape, begin: str = "BEGIN"
) -> Prepared:
    """The `_inserts` of `shape` between ``begin`` and COMMIT, as one
    script (`transactions.runs_scripts`)."""
    inserts = [Prepared(insert, dialect, schema=schema) for insert in _inserts(dialect, shape)]
    control = transactions.control
    return Prepared.script([control(dialect, begin), *inserts, control(dialect, "COMMIT")])


@dataclass(frozen=True)
class Rows:
    """What a `put` or `put_writes` stores, serialized before the saver
    takes a connection (and on SQLite, the single writer's lock). Make it
    with `of`, which counts what `plan.plan` weighs."""

    thread_id: str
    batches: tuple[Batch, ...]  # the inserts that have rows
    checkpoint: bool  # a put's (shallow mode prunes after it)
    shape: Shape  # each insert's table, update and row count
    count: int  # rows
    binds: int  # bind parameters of the inserts, one per column of each row
    size: int  # bytes (or characters) of their keys and serialized values

    @classmethod
    def of(cls, thread_id: str, batches: Iterable[Batch], checkpoint: bool) -> Rows:
        """The rows of these inserts (those that have any)."""
        kept, shape = [], []
        count = binds = size = 0
        for batch in batches:
            table, updated, rows = batch
            if rows:
                kept.append(batch)
                shape.append((table, updated, len(rows)))
                count += len(rows)
                binds += len(rows) * len(table.columns)
                values = itertools.chain.from_iterable(map(_sized_columns(table), rows))
                size += sum(map(len, filter(None, values)))  # NULLs left out
        return cls(thread_id, tuple(kept), checkpoint, tuple(shape), count, binds, size)

    @property
    def inserts(self) -> int:
        """INSERT statements: one per table and update form with rows."""
        return len(self.batches)


def put_rows(
    opts: Options,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
) -> Rows:
    """A checkpoint's rows: its changed channel values (rows that keep
    values already stored), then the checkpoint row (an upsert: a re-put
    replaces it but keeps its original parent)."""
    row, values = codec.put_rows(opts.serde, config, checkpoint, metadata, new_versions)
    batches = ((B, None, values), (C, CHECKPOINT_UPDATE, [row]))
    return Rows.of(row["thread_id"], batches, checkpoint=True)


def write_rows(
    opts: Options,
    config: RunnableConfig,
    writes: Sequence[tuple[str, Any]],
    task_id: str,
    task_path: str,
) -> Rows:
    """A task's writes. Writes to special channels replace a stored one of
    the task; others keep it (see `codec.replaces`)."""
    rows = codec.write_rows(opts.serde, config, writes, task_id, task_path)
    replacing = [r for r in rows if codec.replaces(r["channel"])]
    keeping = [r for r in rows if not codec.replaces(r["channel"])]
    batches = ((W, WRITE_UPDATE, replacing), (W, None, keeping))
    thread_id = rows[0]["thread_id"] if rows else Address.of(config).thread_id
    return Rows.of(thread_id, batches, checkpoint=False)


def store(conn: Connection, plan: Plan, rows: Rows, opts: Options) -> None:
    """Store the rows of a `put` or `put_writes` as ``plan`` says (see
    `sqlsaver.execution.plan`), with what the policies ask for (shallow
    mode's prune, TTL's expiry). On MySQL, a row larger than the server
    takes is refused before any is sent (`limits.refuse_oversized`)."""
    dialect, schema = conn.dialect, schemas.of(conn)
    if rows.size >= limits.PACKET_CHECKED_FROM and dialects.limits_statements(dialect):
        for table, updated, batch in rows.batches:
            sql = _insert(dialect, schema, table, updated).sql
            limits.refuse_oversized(conn, table.name, sql, batch)
    if plan.form == "each":
        _insert_each(conn, rows)
    elif plan.form == "chain":
        _chained_insert(dialect, schema, rows.shape).run(conn, _row_params(rows))
    elif transactions.runs_scripts(conn):
        try:
            begin = galera.begin_write("BEGIN", conn.info)
            _insert_script(dialect, schema, rows.shape, begin).run(conn, _row_params(rows))
        except BaseException:
            # A script stops at the statement that fails: its BEGIN ran,
            # its COMMIT did not.
            transactions.rollback(conn)
            raise
    else:  # a script's inserts, where the connection takes no scripts
        with transactions.own_transaction(conn):
            _insert_each(conn, rows)
    if rows.checkpoint and opts.policies.shallow:
        prune_keep_latest(conn, opts, rows.thread_id)
    policies.touch(conn, opts.policies, rows.thread_id)


def _row_params(rows: Rows) -> dict[str, Any]:
    """Every value of the rows, by its parameter name in `_row_slots`."""
    names, getters = _row_binding(rows.shape)
    every_row = itertools.chain.from_iterable(map(_ROWS_OF_BATCH, rows.batches))
    values = itertools.chain.from_iterable(
        get(row) for get, row in zip(getters, every_row, strict=True)
    )
    return dict(zip(names, values, strict=True))


def insert_copied(conn: Connection, page: Sequence[tuple[Table, list[dict[str, Any]]]]) -> None:
    """Rows copied from another database (`sqlsaver.transfer`), each
    table's as one driver call; a row whose key is stored already is kept,
    so a copy run again stores nothing twice. On MySQL, a row larger than
    the server takes is refused before any is sent."""
    dialect = conn.dialect
    for table, rows in page:
        if not rows:
            continue
        insert = _insert(dialect, schemas.of(conn), table)
        if dialects.limits_statements(dialect):
            limits.refuse_oversized(conn, table.name, insert.sql, rows)
        insert.run_many(conn, rows)


def _insert_each(conn: Connection, rows: Rows) -> None:
    """Each insert's rows as one driver call."""
    for table, updated, batch in rows.batches:
        _insert(conn.dialect, schemas.of(conn), table, updated).run_many(conn, batch)
