"""What the reads, the delta walk and the maintenance share: the saver's
`Options`, the tables' columns, chunked key lookups, and the one statement
that reads a namespace's writes and channel values together."""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, NamedTuple, TypeVar

from langgraph.checkpoint.base import PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Table,
    and_,
    bindparam,
    func,
    or_,
    select,
    tuple_,
    union_all,
)

from sqlsaver import codec, schemas
from sqlsaver.codec import Address
from sqlsaver.execution import transactions
from sqlsaver.execution.prepared import Prepared, execute, padded, slots
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import writes as W
from sqlsaver.ops.union import Layout, named
from sqlsaver.policies import Policies

# Key tuples per `IN (...)`: well under every driver's bind-parameter cap.
CHUNK = 500
# Values looked up per statement by their keys in one namespace: two IN lists
# of up to 256 each (padded), within SQLite's oldest limit of 999 parameters.
VALUES_CHUNK = 256

CHECKPOINT_COLUMNS = (
    C.c.thread_id,
    C.c.checkpoint_ns,
    C.c.checkpoint_id,
    C.c.parent_checkpoint_id,
    C.c.checkpoint_type,
    C.c.checkpoint,
    C.c.metadata_type,
    C.c.metadata_blob,
    C.c.channel_versions,
)
# A result row of `CHECKPOINT_COLUMNS` (or a subset), read by attribute.
Row = Any
Read = TypeVar("Read")


@dataclass(frozen=True)
class Options:
    """What every operation needs to know about the saver calling it."""

    serde: SerializerProtocol
    policies: Policies = Policies()


def _chunks(items: Iterable[Any], size: int | None = None) -> Iterable[list[Any]]:
    """Lists of up to ``size`` items (`CHUNK`, as it is when called)."""
    size = size or CHUNK
    items = list(items)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _keys_in(columns: Sequence[Any], keys: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
    """``(columns) IN keys``, with leading columns that are the same in every
    key written as plain equalities, so the primary key index is used."""
    fixed = 0
    while fixed < len(columns) - 1 and len({k[fixed] for k in keys}) == 1:
        fixed += 1
    equal = [columns[i] == keys[0][i] for i in range(fixed)]
    rest = columns[fixed:]
    if len(rest) == 1:
        return and_(*equal, rest[0].in_(sorted({k[fixed] for k in keys})))
    return and_(*equal, tuple_(*rest).in_(sorted({k[fixed:] for k in keys})))


def _checkpoint_key(table: Any) -> tuple[Any, Any, Any]:
    return (table.c.thread_id, table.c.checkpoint_ns, table.c.checkpoint_id)


def _same_checkpoint(a: Any, b: Any) -> ColumnElement[bool]:
    """A join of two tables (or subqueries) on the checkpoint key."""
    return and_(*(x == y for x, y in zip(_checkpoint_key(a), _checkpoint_key(b), strict=True)))


def _rows_by_keys(
    conn: Connection, key: Sequence[Any], columns: Sequence[Any], keys: Iterable[tuple[Any, ...]]
) -> Iterator[Row]:
    """The ``key`` and ``columns`` of the rows whose ``key`` is among
    ``keys``: a statement per `CHUNK` of them."""
    for chunk in _chunks(keys):
        yield from execute(conn, select(*key, *columns).where(_keys_in(key, chunk)))


WRITE_COLUMNS = (W.c.task_id, W.c.idx, W.c.task_path, W.c.channel, W.c.type, W.c.blob)
VALUE_COLUMNS = (B.c.channel, B.c.version, B.c.type, B.c.blob)
# A row's checkpoint key, and a write row's `WRITE_COLUMNS` as
# `codec.pending_writes` takes them: read by name, cheaply (C getters).
checkpoint_key_of = operator.attrgetter("thread_id", "checkpoint_ns", "checkpoint_id")
write_of = operator.attrgetter(*(c.name for c in WRITE_COLUMNS))


@cache
def _in_namespace(
    dialect: Dialect,
    schema: str | None,
    table: Table,
    columns: tuple[str, ...],
    lists: tuple[tuple[str, int], ...],
) -> Prepared:
    """SELECT ``columns`` of ``table``'s rows in one namespace whose columns
    named in ``lists`` are among that many `slots` (fill them with `padded`)."""
    return Prepared(
        select(*(table.c[name] for name in columns)).where(
            table.c.thread_id == bindparam("thread_id"),
            table.c.checkpoint_ns == bindparam("checkpoint_ns"),
            *(table.c[name].in_(slots(name, count, table.c[name].type)) for name, count in lists),
        ),
        dialect,
        schema=schema,
    )


def _load_blobs(
    conn: Connection, serde: SerializerProtocol, keys: Iterable[tuple[str, str, str, str]]
) -> dict[tuple[str, str, str, str], Any]:
    keys = set(keys)
    if not keys:
        return {}
    values = {}
    namespaces = {k[:2] for k in keys}
    if len(namespaces) == 1:  # a statement per chunk, compiled once per IN-list size
        ((thread_id, ns),) = namespaces
        for chunk in _chunks(sorted(keys), VALUES_CHUNK):
            channels, channel_params = padded("channel", (k[2] for k in chunk))
            versions, version_params = padded("version", (k[3] for k in chunk))
            params = {"thread_id": thread_id, "checkpoint_ns": ns}
            params.update(channel_params)
            params.update(version_params)
            # Channels and versions matched apart (two plain IN lists, cheaper
            # than a row-value IN); the exact pairs are picked here.
            found = _in_namespace(
                conn.dialect,
                schemas.of(conn),
                B,
                ("channel", "version", "type", "blob"),
                (("channel", channels), ("version", versions)),
            ).rows(conn, params)
            for r in found:
                if (key := (thread_id, ns, r.channel, r.version)) in keys:
                    values[key] = codec.load(serde, r.type, r.blob)
        return values
    blob_key = (B.c.thread_id, B.c.checkpoint_ns, B.c.channel, B.c.version)
    for r in _rows_by_keys(conn, blob_key, (B.c.type, B.c.blob), keys):
        values[(r.thread_id, r.checkpoint_ns, r.channel, r.version)] = codec.load(
            serde, r.type, r.blob
        )
    return values


# What `_load_writes` selects: the checkpoint id, then `WRITE_COLUMNS`.
_WRITES_BY_ID = ("checkpoint_id", *(c.name for c in WRITE_COLUMNS))


def _load_writes(
    conn: Connection,
    serde: SerializerProtocol,
    at: Address,
    ids: Sequence[str],
    channels: Sequence[str] | None = None,
) -> dict[str, list[PendingWrite]]:
    """The writes (to ``channels``, or all) of these checkpoints of one
    namespace, per checkpoint id, each list in `writes_sort_key` order."""
    rows: dict[str, list[Sequence[Any]]] = defaultdict(list)
    params = {"thread_id": at.thread_id, "checkpoint_ns": at.checkpoint_ns}
    lists: tuple[tuple[str, int], ...] = ()
    if channels is not None:
        channel_count, channel_params = padded("channel", channels)
        params.update(channel_params)
        lists = (("channel", channel_count),)
    for chunk in _chunks(ids):
        id_count, id_params = padded("checkpoint_id", chunk)
        params.update(id_params)
        stmt = _in_namespace(
            conn.dialect, schemas.of(conn), W, _WRITES_BY_ID, (("checkpoint_id", id_count), *lists)
        )
        for r in stmt.rows(conn, params):
            rows[r.checkpoint_id].append(write_of(r))
    return {key: codec.pending_writes(serde, group) for key, group in rows.items()}


# The padded lists of one `_writes_and_values_statement` hold at most this
# many values: with its thread and namespace (bound twice by positional
# drivers), within SQLite's oldest limit of 999 parameters.
WRITES_AND_VALUES_BINDS = 990
# The rows of a `_writes_and_values_statement`: a write's checkpoint id and
# `WRITE_COLUMNS`; a value's channel, type, blob and version; a stored
# checkpoint's id.
WRITES_AND_VALUES = Layout(
    {
        "checkpoint_id": W.c.checkpoint_id.type,
        **{c.name: c.type for c in WRITE_COLUMNS},
        "version": B.c.version.type,
    }
)
# Read from plain rows (`Layout.getter`): every write and value of a read.
_WRITE_HEAD = WRITES_AND_VALUES.getter("checkpoint_id", "task_id")
_WRITE = WRITES_AND_VALUES.getter(*(c.name for c in WRITE_COLUMNS))
_VALUE = WRITES_AND_VALUES.getter("channel", "version", "type", "blob")


@cache
def _writes_and_values_statement(
    dialect: Dialect,
    schema: str | None,
    id_count: int,
    channel_count: int,
    version_count: int,
    write_channels: int,
    present: bool = False,
    range_count: int = 0,
) -> Prepared:
    """In one namespace, the writes of checkpoints (`padded` slots
    ``checkpoint_id_<i>``, and those from ``first_id_<i>`` to
    ``last_id_<i>`` for each of ``range_count`` ranges; with
    ``write_channels``, only those to channels ``channel_<i>``) and channel
    values (``value_channel_<i>`` and ``value_version_<i>``; the exact
    pairs are picked from the rows; none for no channels), as one statement
    of narrow rows (`WRITES_AND_VALUES`): a write's, a value's, and with
    ``present``, also the ids of those checkpoints still stored. (A range
    of the primary key is read by the index where a long IN list is not:
    the plan PostgreSQL keeps for a prepared statement builds the list anew
    to test each row of the namespace.)"""

    def in_namespace(table: Table) -> tuple[ColumnElement[bool], ...]:
        return (
            table.c.thread_id == bindparam("thread_id"),
            table.c.checkpoint_ns == bindparam("checkpoint_ns"),
        )

    def of_checkpoints(column: Column[str]) -> ColumnElement[bool]:
        ranges = [
            column.between(first, last)
            for first, last in zip(
                slots("first_id", range_count, column.type),
                slots("last_id", range_count, column.type),
                strict=True,
            )
        ]
        listed = [column.in_(slots("checkpoint_id", id_count, column.type))] if id_count else []
        return or_(*ranges, *listed)

    writes = WRITES_AND_VALUES.branch(
        {"checkpoint_id": W.c.checkpoint_id, **named(WRITE_COLUMNS)}
    ).where(*in_namespace(W), of_checkpoints(W.c.checkpoint_id))
    if write_channels:
        writes = writes.where(W.c.channel.in_(slots("channel", write_channels, W.c.channel.type)))
    parts: list[Any] = [writes]
    if channel_count:
        values = WRITES_AND_VALUES.branch(named(VALUE_COLUMNS)).where(
            *in_namespace(B),
            B.c.channel.in_(slots("value_channel", channel_count, B.c.channel.type)),
            B.c.version.in_(slots("value_version", version_count, B.c.version.type)),
        )
        parts.append(values)
    if present:
        stored = WRITES_AND_VALUES.branch({"checkpoint_id": C.c.checkpoint_id}).where(
            *in_namespace(C), of_checkpoints(C.c.checkpoint_id)
        )
        parts.append(stored)
    return Prepared(union_all(*parts) if len(parts) > 1 else writes, dialect, schema=schema)


class WritesAndValues(NamedTuple):
    """What `_writes_and_values_in` read."""

    writes: dict[str, list[PendingWrite]]  # by checkpoint id
    values: dict[Any, Any]  # by `key_of`


def _writes_and_values_in(
    conn: Connection,
    serde: SerializerProtocol,
    at: Address,
    ids: Iterable[str],
    channels: Iterable[str],
    versions: Iterable[str],
    key_of: Callable[[str, str], Any],
    write_channels: Sequence[str] | None = None,
    stored: Collection[str] = (),
    ranges: Sequence[tuple[str, str]] = (),
    keep: Container[str] | None = None,
) -> WritesAndValues | None:
    """In one namespace, by one `_writes_and_values_statement`: the writes
    of checkpoints ``ids`` and of every checkpoint in ``ranges`` (each its
    least and greatest id, in the database's order: a range of the primary
    key, two parameters for any number of ids), at least one of the two,
    to ``write_channels`` or all, by checkpoint id, each list in
    `writes_sort_key` order (with ``keep``, only those of the checkpoints
    it holds); the channel values whose channel is among ``channels`` and
    version among ``versions`` (one of each at least, or no channels),
    under ``key_of(channel, version)``, or left out where that is None (the
    caller picks the exact pairs). With ``stored``, checkpoints among those
    that must still be stored: the same statement looks, and where one is
    not, the result is None (see `_on_one_state`). None too where the
    statement's padded lists would hold more than `WRITES_AND_VALUES_BINDS`
    values."""
    present = bool(stored)
    id_count, params = padded("checkpoint_id", ids) if ids else (0, {})
    range_count, by_slot = padded("range", ranges) if ranges else (0, {})
    for i, (first, last) in enumerate(by_slot.values()):
        params[f"first_id_{i}"], params[f"last_id_{i}"] = first, last
    # Channels and versions matched apart (two plain IN lists, cheaper than
    # a row-value IN).
    channel_count, channel_params = padded("value_channel", channels) if channels else (0, {})
    version_count, version_params = padded("value_version", versions) if channels else (0, {})
    write_channel_count = 0
    if write_channels is not None:
        write_channel_count, write_channel_params = padded("channel", write_channels)
        params.update(write_channel_params)
    # The checkpoints' slots go in two parts of the union with ``present``,
    # which positional drivers bind twice.
    checkpoint_binds = (id_count + 2 * range_count) * (2 if present else 1)
    if checkpoint_binds + channel_count + version_count + write_channel_count > (
        WRITES_AND_VALUES_BINDS
    ):
        return None
    params.update(channel_params, **version_params)
    params.update(thread_id=at.thread_id, checkpoint_ns=at.checkpoint_ns)
    stmt = _writes_and_values_statement(
        conn.dialect,
        schemas.of(conn),
        id_count,
        channel_count,
        version_count,
        write_channel_count,
        present,
        range_count,
    )
    writes: dict[str, list[Sequence[Any]]] = defaultdict(list)
    values = {}
    found_stored = set()
    for r in stmt.rows(conn, params, named=False):
        checkpoint_id, task_id = _WRITE_HEAD(r)
        if checkpoint_id is None:  # a value
            channel, version, type_, blob = _VALUE(r)
            if (key := key_of(channel, version)) is not None:
                values[key] = codec.load(serde, type_, blob)
        elif task_id is None:  # a checkpoint still stored
            found_stored.add(checkpoint_id)
        elif keep is None or checkpoint_id in keep:
            writes[checkpoint_id].append(_WRITE(r))
    if not found_stored.issuperset(stored):
        return None  # one went since it was found
    pending = {k: codec.pending_writes(serde, w) for k, w in writes.items()}
    return WritesAndValues(pending, values)


@cache
def _latest_id_statement(dialect: Dialect, schema: str | None) -> Prepared:
    return Prepared(
        select(func.max(C.c.checkpoint_id).label("checkpoint_id")).where(
            C.c.thread_id == bindparam("thread_id"),
            C.c.checkpoint_ns == bindparam("checkpoint_ns"),
        ),
        dialect,
        schema=schema,
    )


def _latest_id(conn: Connection, at: Address) -> str | None:
    params = {"thread_id": at.thread_id, "checkpoint_ns": at.checkpoint_ns}
    rows = _latest_id_statement(conn.dialect, schemas.of(conn)).rows(conn, params)
    return rows[0].checkpoint_id if rows else None


def _on_one_state(
    conn: Connection, read: Callable[[bool], Read | None], checks: bool = True
) -> Read:
    """What ``read(checked)`` reads, as of one state of the database: read
    first without a transaction, its last statement checking that what the
    first ones found is still stored (``checked``; it returns None where
    not, or where that cannot be told), else again on one snapshot
    (`transactions.snapshot`). ``checks``: False where one statement reads all."""
    found = read(checks)
    if found is None:
        with transactions.snapshot(conn):
            found = read(False)
    assert found is not None
    return found
