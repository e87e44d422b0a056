"""Every database operation of sqlsaver, written once.

Each operation is a plain function over a sync SQLAlchemy `Connection` that
is already inside the transaction it must run in. `SQLSaver` calls it in a
thread of its own; `AsyncSQLSaver` calls the very same function through
`AsyncConnection.run_sync` (SQLAlchemy's greenlet bridge: the async driver
does the I/O). There is no second copy of any SQL.
"""

from __future__ import annotations

import itertools
import json
import operator
from collections import defaultdict
from collections.abc import (
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from typing import Any, NamedTuple, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
    PendingWrite,
    get_checkpoint_id,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    Column,
    ColumnElement,
    CompoundSelect,
    Connection,
    Dialect,
    Insert,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    tuple_,
    type_coerce,
    union_all,
    update,
)

from sqlsaver import codec, dialects, policies
from sqlsaver.codec import Address
from sqlsaver.execution import limits, transactions
from sqlsaver.execution.plan import Plan
from sqlsaver.execution.prepared import Prepared, execute, padded, slots
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import threads as T
from sqlsaver.models import writes as W
from sqlsaver.policies import Policies, Strategy, Visibility

# Rows a `list` page holds at most: bounds memory however large the thread.
PAGE_SIZE = 100
# Key tuples per `IN (...)`: well under every driver's bind-parameter cap.
CHUNK = 500
# Values looked up per statement by their keys in one namespace: two IN lists
# of up to 256 each (padded), within SQLite's oldest limit of 999 parameters.
VALUES_CHUNK = 256
# Checkpoints read by the pages of a parent-chain walk: few first (a
# `DeltaChannel` is seeded every `snapshot_frequency` updates, 100 by
# default, so its seed is often near), more at each further page.
WALK_STEPS = (32, 128, 512)

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
CHECKPOINT_UPDATE = (
    "checkpoint_type",
    "checkpoint",
    "metadata_type",
    "metadata_blob",
    "metadata_json",
    "run_id",
    "channel_versions",
)
# A result row of `CHECKPOINT_COLUMNS` (or a subset), read by attribute.
Row = Any
Read = TypeVar("Read")
WRITE_UPDATE = ("task_path", "channel", "type", "blob")
COUNTERS_KEY = dialects.canonical_key("counters_since_delta_snapshot")
PARENTS_KEY = dialects.canonical_key("parents")


@dataclass(frozen=True)
class Options:
    """What every operation needs to know about the saver calling it."""

    serde: SerializerProtocol
    policies: Policies = Policies()


# -- helpers -----------------------------------------------------------------


def _chunks(items: Iterable[Any], size: int = CHUNK) -> Iterable[list[Any]]:
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


@cache
def _in_namespace(
    dialect: Dialect, table: Table, columns: tuple[str, ...], lists: tuple[tuple[str, int], ...]
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
                B,
                ("channel", "version", "type", "blob"),
                (("channel", channels), ("version", versions)),
            ).rows(conn, params)
            for channel, version, type_, blob in found:
                if (key := (thread_id, ns, channel, version)) in keys:
                    values[key] = codec.load(serde, type_, blob)
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
        stmt = _in_namespace(conn.dialect, W, _WRITES_BY_ID, (("checkpoint_id", id_count), *lists))
        for r in stmt.rows(conn, params, named=False):
            rows[r[0]].append(r[1:])
    return {key: codec.pending_writes(serde, group) for key, group in rows.items()}


def _writes_of(
    conn: Connection, serde: SerializerProtocol, rows: Sequence[Row]
) -> dict[tuple[str, str, str], list[PendingWrite]]:
    """The writes of these checkpoints rows, by checkpoint key: one
    statement for a namespace's, one per `CHUNK` of keys across several."""
    namespaces = {(r.thread_id, r.checkpoint_ns) for r in rows}
    if len(namespaces) == 1:
        ((thread_id, ns),) = namespaces
        ids = [r.checkpoint_id for r in rows]
        found = _load_writes(conn, serde, Address(thread_id, ns), ids)
        return {(thread_id, ns, key): writes for key, writes in found.items()}
    keys = ((r.thread_id, r.checkpoint_ns, r.checkpoint_id) for r in rows)
    grouped: dict[tuple[str, str, str], list[Sequence[Any]]] = defaultdict(list)
    for r in _rows_by_keys(conn, _checkpoint_key(W), WRITE_COLUMNS, keys):
        grouped[tuple(r[:3])].append(r[3:])
    return {k: codec.pending_writes(serde, group) for k, group in grouped.items()}


def _assemble(
    conn: Connection, serde: SerializerProtocol, found: Found, checked: bool = False
) -> list[CheckpointTuple] | None:
    """The tuples of what a `_tuples_statement` found. Where it found the
    checkpoints alone, their writes and channel values take one statement
    more (`_writes_and_values`; ``checked``: None unless it found the
    checkpoints still stored); where it joined them (PostgreSQL), those of
    checkpoints whose versions are not in their column take one more."""
    rows, writes, blob_values = found
    if not rows:
        return []
    stored = [codec.stored_checkpoint(serde, r) for r in rows]
    keys = [codec.value_keys(r, s) for r, s in zip(rows, stored, strict=True)]
    joined = dialects.expands_json(conn.dialect)
    missing = {
        key
        for r, row_keys in zip(rows, keys, strict=True)
        if not joined or r.channel_versions is None
        for key in row_keys.values()
    } - blob_values.keys()
    if not joined:
        read = _writes_and_values(conn, serde, rows, missing, checked)
        if read is None:
            return None
        writes, blob_values = read
    elif missing:
        blob_values = {**blob_values, **_load_blobs(conn, serde, missing)}
    return [
        codec.checkpoint_tuple(
            serde,
            r,
            s,
            row_keys,
            blob_values,
            writes.get((r.thread_id, r.checkpoint_ns, r.checkpoint_id), []),
        )
        for r, s, row_keys in zip(rows, stored, keys, strict=True)
    ]


# The padded lists of one `_writes_and_values_statement` hold at most this
# many values: with its thread and namespace (bound twice by positional
# drivers), within SQLite's oldest limit of 999 parameters.
WRITES_AND_VALUES_BINDS = 990


@cache
def _writes_and_values_statement(
    dialect: Dialect,
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
    of narrow rows: a write's checkpoint id, `WRITE_COLUMNS` and a NULL
    version; or a value's channel, type, blob and version, its other
    columns NULL. With ``present``, also the ids of those checkpoints still
    stored, the other columns NULL. (A range of the primary key is read by
    the index where a long IN list is not: the plan PostgreSQL keeps for a
    prepared statement builds the list anew to test each row of the
    namespace.)"""

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

    # Typed: the first branch's types decide how each column is read.
    no_version = type_coerce(null(), B.c.version.type).label("version")
    writes = select(W.c.checkpoint_id, *WRITE_COLUMNS, no_version).where(
        *in_namespace(W), of_checkpoints(W.c.checkpoint_id)
    )
    if write_channels:
        writes = writes.where(W.c.channel.in_(slots("channel", write_channels, W.c.channel.type)))
    parts: list[Any] = [writes]
    if channel_count:
        values = select(*[null()] * 4, B.c.channel, B.c.type, B.c.blob, B.c.version).where(
            *in_namespace(B),
            B.c.channel.in_(slots("value_channel", channel_count, B.c.channel.type)),
            B.c.version.in_(slots("value_version", version_count, B.c.version.type)),
        )
        parts.append(values)
    if present:
        stored = select(C.c.checkpoint_id, *[null()] * 7).where(
            *in_namespace(C), of_checkpoints(C.c.checkpoint_id)
        )
        parts.append(stored)
    return Prepared(union_all(*parts) if len(parts) > 1 else writes, dialect)


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
        if r[0] is not None:  # a write, or (no task id) a checkpoint still stored
            if r[1] is None:
                found_stored.add(r[0])
            elif keep is None or r[0] in keep:
                writes[r[0]].append(r[1:7])
        elif (key := key_of(r[4], r[7])) is not None:
            values[key] = codec.load(serde, r[5], r[6])
    if not found_stored.issuperset(stored):
        return None  # one went since it was found
    pending = {k: codec.pending_writes(serde, w) for k, w in writes.items()}
    return WritesAndValues(pending, values)


def _writes_and_values(
    conn: Connection,
    serde: SerializerProtocol,
    rows: Sequence[Row],
    keys: set[tuple[str, str, str, str]],
    checked: bool = False,
) -> (
    tuple[dict[tuple[str, str, str], list[PendingWrite]], dict[tuple[str, str, str, str], Any]]
    | None
):
    """The writes of these checkpoint rows, by checkpoint key, and the
    channel values of these blob keys: one statement where all are in one
    namespace (a `get_tuple`, a `list` page of one thread), else one for
    each kind (`_writes_of`, `_load_blobs`). ``checked``: None unless that
    one statement read them all and found every checkpoint still stored
    (see `_read_tuples`)."""
    namespaces = {(r.thread_id, r.checkpoint_ns) for r in rows} | {k[:2] for k in keys}
    if len(namespaces) == 1 and (keys or checked):
        ((thread_id, ns),) = namespaces

        def key_of(channel: str, version: str) -> tuple[str, str, str, str] | None:
            key = (thread_id, ns, channel, version)
            return key if key in keys else None

        ids = [r.checkpoint_id for r in rows]
        found = _writes_and_values_in(
            conn,
            serde,
            Address(thread_id, ns),
            ids,
            [k[2] for k in keys],
            [k[3] for k in keys],
            key_of,
            stored=ids if checked else (),
        )
        if found is not None:
            return {(thread_id, ns, k): w for k, w in found.writes.items()}, found.values
    if checked:
        return None  # one went since the checkpoints were read, or they take more statements
    return _writes_of(conn, serde, rows), _load_blobs(conn, serde, keys)


@cache
def _latest_id_statement(dialect: Dialect) -> Prepared:
    return Prepared(
        select(func.max(C.c.checkpoint_id).label("checkpoint_id")).where(
            C.c.thread_id == bindparam("thread_id"),
            C.c.checkpoint_ns == bindparam("checkpoint_ns"),
        ),
        dialect,
    )


def _latest_id(conn: Connection, at: Address) -> str | None:
    params = {"thread_id": at.thread_id, "checkpoint_ns": at.checkpoint_ns}
    rows = _latest_id_statement(conn.dialect).rows(conn, params)
    return rows[0].checkpoint_id if rows else None


# -- reads -------------------------------------------------------------------


def _tuples_statement(
    dialect: Dialect, chosen: Select[Any], order: Sequence[Any] = ()
) -> Select[Any] | CompoundSelect[Any]:
    """What the tuples of the checkpoints ``chosen`` selects need, in one
    statement of rows of three kinds (the columns of the others NULL): each
    checkpoint, each of their writes (`WRITE_COLUMNS`), and each channel
    value they reference (`VALUE_COLUMNS`). `_found` splits them up again.

    Where the database cannot expand the channel-versions column in SQL
    (see `dialects.expands_json`: SQLite, MySQL, MariaDB), it is ``chosen``
    alone, the checkpoints' own columns, and `_assemble` takes their writes
    and values by one narrow statement more (`_writes_and_values`). Joining
    the writes here instead would repeat every checkpoint column on each
    write row, which costs the driver more than the round trip it saves (a
    checkpoint with 140 writes: 2.3 against 1.5 ms on MySQL).
    """
    if not dialects.expands_json(dialect):
        return chosen
    c = chosen.cte("c")
    no_writes = [type_coerce(null(), col.type).label(f"write_{col.name}") for col in WRITE_COLUMNS]
    # Cast: PostgreSQL types a union's columns branch by branch, and NULLs
    # in the first two branches would be text where the third has bytea.
    no_values = [cast(null(), col.type).label(f"value_{col.name}") for col in VALUE_COLUMNS]
    # Labelled: a compound's ORDER BY names its columns (SQLite).
    checkpoints = select(*(col.label(col.name) for col in c.c), *no_writes, *no_values)
    no_checkpoint = [null()] * (len(c.c) - 3)
    writes = select(*_checkpoint_key(c), *no_checkpoint, *WRITE_COLUMNS, *no_values).select_from(
        c.join(W, _same_checkpoint(W, c))
    )
    entries = dialects.json_entries(dialect, c.c.channel_versions)
    # Each value once, however many of the checkpoints reference it.
    referenced = (
        select(c.c.thread_id, c.c.checkpoint_ns, entries.c.key, entries.c.value)
        .select_from(c)
        .join(entries, true())
        .distinct()
        .subquery("referenced")
    )
    same_blob = (
        B.c.thread_id == referenced.c.thread_id,
        B.c.checkpoint_ns == referenced.c.checkpoint_ns,
        B.c.channel == referenced.c.key,
        B.c.version == referenced.c.value,
    )

    def looked_up(column: Any) -> Any:
        # A subquery per column, not a join: planners then look each
        # value up by its key (PostgreSQL, guessing 100 entries per
        # JSON object, would rather hash the whole blobs table). A
        # version without a stored value looks up NULL.
        return select(column).where(*same_blob).scalar_subquery()

    values = select(
        referenced.c.thread_id,
        referenced.c.checkpoint_ns,
        *[null()] * (len(c.c) - 2 + len(WRITE_COLUMNS)),
        referenced.c.key,
        referenced.c.value,
        looked_up(B.c.type),
        looked_up(B.c.blob),
    )
    stmt = union_all(checkpoints, writes, values)
    return stmt.order_by(*(stmt.selected_columns[col.name].desc() for col in order))


# A `_tuples_statement`'s rows split up: the checkpoint rows in order, the
# writes of each, and the channel values it joined, by blob key.
Found = tuple[
    list[Row],
    dict[tuple[str, str, str], list[PendingWrite]],
    dict[tuple[str, str, str, str], Any],
]
_WRITES = slice(len(CHECKPOINT_COLUMNS), len(CHECKPOINT_COLUMNS) + len(WRITE_COLUMNS))


def _found(dialect: Dialect, serde: SerializerProtocol, rows: Sequence[Row]) -> Found:
    """Split the rows of a `_tuples_statement` (or take its checkpoints:
    where it has nothing else, see `dialects.expands_json`)."""
    if not dialects.expands_json(dialect):
        return list(rows), {}, {}
    checkpoints: list[Row] = []
    writes: dict[tuple[str, str, str], list[Sequence[Any]]] = defaultdict(list)
    values: dict[tuple[str, str, str, str], Any] = {}
    for r in rows:
        if r.value_channel is not None:
            if r.value_type is not None:  # else: that version has no value
                blob_key = (r.thread_id, r.checkpoint_ns, r.value_channel, r.value_version)
                values[blob_key] = codec.load(serde, r.value_type, r.value_blob)
            continue
        if r.write_task_id is not None:  # a write, else a checkpoint
            writes[(r.thread_id, r.checkpoint_ns, r.checkpoint_id)].append(r[_WRITES])
        else:
            checkpoints.append(r)
    pending = {k: codec.pending_writes(serde, w) for k, w in writes.items() if w}
    return checkpoints, pending, values


@cache
def _checkpoint_with_writes(dialect: Dialect, by_id: bool, visibility: Visibility) -> Prepared:
    """One checkpoint (by id, or the latest), with what its tuple needs."""
    chosen = select(*CHECKPOINT_COLUMNS).where(
        C.c.thread_id == bindparam("thread_id"), C.c.checkpoint_ns == bindparam("checkpoint_ns")
    )
    if by_id:
        chosen = chosen.where(C.c.checkpoint_id == bindparam("checkpoint_id"))
    else:
        chosen = chosen.order_by(C.c.checkpoint_id.desc()).limit(1)
    if (shown := policies.visible(visibility, dialect)) is not None:
        chosen = chosen.where(shown)
    return Prepared(_tuples_statement(dialect, chosen), dialect)


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


def _read_tuples(
    conn: Connection, serde: SerializerProtocol, read: Callable[[], list[Row]]
) -> tuple[Found, list[CheckpointTuple]]:
    """The tuples of the checkpoints that ``read()`` finds (by a
    `_tuples_statement`), as of one state of the database.

    On PostgreSQL that statement brings them whole. Elsewhere their writes
    and values take one statement more, which also finds the checkpoints
    still stored: values and writes go only with their checkpoints, so
    what it read of them is whole, without a transaction around the two
    (two round trips more on MySQL). Where one went meanwhile (a shallow
    `put`'s prune, a delete), or that cannot be told (several namespaces),
    both are read again on one snapshot (`transactions.snapshot`)."""

    def tuples(checked: bool) -> tuple[Found, list[CheckpointTuple]] | None:
        found = _found(conn.dialect, serde, read())
        assembled = _assemble(conn, serde, found, checked)
        return None if assembled is None else (found, assembled)

    return _on_one_state(conn, tuples, checks=not dialects.expands_json(conn.dialect))


def get_tuple(conn: Connection, opts: Options, config: RunnableConfig) -> CheckpointTuple | None:
    """The checkpoint `config` names, or the latest of its thread/namespace:
    one statement on PostgreSQL, two elsewhere (see `_tuples_statement`)."""
    at = Address.of(config)
    stmt = _checkpoint_with_writes(conn.dialect, bool(at.checkpoint_id), opts.policies.visibility)
    params: dict[str, Any] = {"thread_id": at.thread_id, "checkpoint_ns": at.checkpoint_ns}
    params.update(opts.policies.params())
    if at.checkpoint_id:
        params["checkpoint_id"] = at.checkpoint_id
    found, tuples = _read_tuples(conn, opts.serde, lambda: stmt.rows(conn, params))
    if not tuples:
        return None
    if opts.policies.refreshes_on_read:
        policies.touch(conn, opts.policies, at.thread_id)
    return tuples[0]


@dataclass(frozen=True)
class ListQuery:
    """A `list` call, and how far its pages have got (keyset pagination)."""

    thread_id: str | None = None
    checkpoint_ns: str | None = None  # None: every namespace
    checkpoint_id: str | None = None
    before_id: str | None = None
    filter: tuple[tuple[str, Any], ...] = ()
    remaining: int | None = None  # None: no limit
    after: tuple[str, ...] | None = field(default=None)

    @classmethod
    def of(
        cls,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
        limit: int | None,
    ) -> ListQuery:
        # None lists every thread; a config must name its thread.
        thread_id = Address.of(config).thread_id if config is not None else None
        configurable = (config or {}).get("configurable") or {}
        before_id = get_checkpoint_id(before) if before else None
        return cls(
            thread_id=thread_id,
            checkpoint_ns=configurable.get("checkpoint_ns"),
            checkpoint_id=configurable.get("checkpoint_id"),
            before_id=before_id,
            filter=tuple((filter or {}).items()),
            remaining=limit,
        )

    @property
    def done(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


@cache
def _list_statement(
    dialect: Dialect,
    pinned: tuple[bool, bool, bool],
    before: bool,
    after: bool,
    filters: tuple[bool, ...],
    visibility: Visibility,
) -> Prepared:
    """A `list` page: the statement for one shape of query, built once.

    ``pinned``: whether thread, namespace and checkpoint id are given;
    ``filters``: per metadata filter, whether its value is None.
    """
    where = [
        dialects.metadata_matches(dialect, C.c.metadata_json, f"filter_{i}", none)
        for i, none in enumerate(filters)
    ]
    if (shown := policies.visible(visibility, dialect)) is not None:
        where.append(shown)
    for column, given in zip(_checkpoint_key(C), pinned, strict=True):
        if given:
            where.append(column == bindparam(column.name, type_=column.type))
    if before:
        where.append(C.c.checkpoint_id < bindparam("before_id", type_=C.c.checkpoint_id.type))
    order = _page_order(pinned)
    if after:
        where.append(
            tuple_(*order) < tuple_(*(bindparam(f"after_{c.name}", type_=c.type) for c in order))
        )
    chosen = (
        select(*CHECKPOINT_COLUMNS)
        .where(*where)
        .order_by(*(c.desc() for c in order))
        .limit(bindparam("page_size", type_=Integer))
    )
    return Prepared(_tuples_statement(dialect, chosen, order), dialect)


def _page_order(pinned: tuple[bool, bool, bool]) -> list[Any]:
    """Newest first; ties (equal ids in several threads or namespaces) are
    broken by the key columns that the query does not pin down."""
    thread_given, ns_given, _ = pinned
    order = [C.c.checkpoint_id]
    if not thread_given:
        order.append(C.c.thread_id)
    if not ns_given:
        order.append(C.c.checkpoint_ns)
    return order


def list_page(
    conn: Connection, opts: Options, query: ListQuery
) -> tuple[list[CheckpointTuple], ListQuery | None]:
    """One page of a `list`, newest first, and the query for the next page:
    one statement on PostgreSQL, two elsewhere (see `_tuples_statement`)."""
    if query.done:
        return [], None
    pinned = (
        query.thread_id is not None,
        query.checkpoint_ns is not None,
        query.checkpoint_id is not None,
    )
    params: dict[str, Any] = {
        "thread_id": query.thread_id,
        "checkpoint_ns": query.checkpoint_ns,
        "checkpoint_id": query.checkpoint_id,
        "before_id": query.before_id,
        **opts.policies.params(),
    }
    for i, (key, value) in enumerate(query.filter):
        params.update(dialects.metadata_params(conn.dialect, f"filter_{i}", key, value))
    order = _page_order(pinned)
    if query.after is not None:
        params.update({f"after_{c.name}": v for c, v in zip(order, query.after, strict=True)})
    size = PAGE_SIZE if query.remaining is None else min(PAGE_SIZE, query.remaining)
    params["page_size"] = size
    stmt = _list_statement(
        conn.dialect,
        pinned,
        query.before_id is not None,
        query.after is not None,
        tuple(value is None for _, value in query.filter),
        opts.policies.visibility,
    )
    found, page = _read_tuples(conn, opts.serde, lambda: stmt.rows(conn, params))
    rows = found[0]
    remaining = None if query.remaining is None else query.remaining - len(rows)
    # No next page after a short one, nor once the limit is reached (which
    # would take a connection only to find it has nothing to do).
    if len(rows) < size or remaining == 0:
        return page, None
    last = rows[-1]
    return page, replace(
        query, after=tuple(getattr(last, c.name) for c in order), remaining=remaining
    )


# What a walk's first page tells of stored values: their keys in a namespace.
_STORED_COLUMNS = (B.c.channel, B.c.version)
# What a walk reads of each checkpoint.
_WALKED_COLUMNS = (
    C.c.checkpoint_id,
    C.c.parent_checkpoint_id,
    C.c.channel_versions,
    C.c.checkpoint_type,
    C.c.checkpoint,
)


def _chain_of_keys(size: int) -> Any:
    """The keys of up to ``size`` checkpoints of the chain of parents from
    ``start_id`` on (itself first): a recursive CTE that looks each parent
    up by its key."""
    key = (C.c.thread_id, C.c.checkpoint_ns)
    chain = (
        select(
            *key, C.c.checkpoint_id, C.c.parent_checkpoint_id, literal_column("0").label("depth")
        )
        .where(
            C.c.thread_id == bindparam("thread_id"),
            C.c.checkpoint_ns == bindparam("checkpoint_ns"),
            C.c.checkpoint_id == bindparam("start_id"),
        )
        .cte("chain", recursive=True)
    )
    # Each step looks its parent's parent up by the whole primary key, in a
    # subquery: planners cannot turn that into a join, which PostgreSQL, on
    # a table it has no statistics of yet, would run as a scan of the whole
    # table per step.
    grandparent = (
        select(C.c.parent_checkpoint_id)
        .where(
            C.c.thread_id == chain.c.thread_id,
            C.c.checkpoint_ns == chain.c.checkpoint_ns,
            C.c.checkpoint_id == chain.c.parent_checkpoint_id,
        )
        .scalar_subquery()
    )
    return chain.union_all(
        select(
            chain.c.thread_id,
            chain.c.checkpoint_ns,
            chain.c.parent_checkpoint_id,
            grandparent,
            chain.c.depth + literal_column("1"),
        ).where(
            chain.c.parent_checkpoint_id.is_not(None),
            chain.c.depth < literal_column(str(size - 1), Integer),
        )
    )


@cache
def _walk_statement(dialect: Dialect, size: int, stored_of: int, keyed: bool) -> Prepared:
    """A page of a parent-chain walk: up to ``size`` checkpoints of a
    namespace (`_WALKED_COLUMNS`), newest first in the database's order of
    ids. Those from ``start_id`` down (one range of the primary key, read
    backwards), or with ``keyed``, the chain of parents from ``start_id``
    on (`_chain_of_keys`), for ids out of time order. With ``stored_of``
    channels (`slots` ``channel_<i>``), the same statement also returns
    which versions of theirs have a stored value (`_STORED_COLUMNS`, keys
    only; the other columns NULL)."""
    newest_first = C.c.checkpoint_id.desc()
    if keyed:
        chain = _chain_of_keys(size)
        page = select(*_WALKED_COLUMNS).select_from(chain.join(C, _same_checkpoint(C, chain)))
    else:
        page = (
            select(*_WALKED_COLUMNS)
            .where(
                C.c.thread_id == bindparam("thread_id"),
                C.c.checkpoint_ns == bindparam("checkpoint_ns"),
                C.c.checkpoint_id <= bindparam("start_id"),
            )
            .limit(literal_column(str(size), Integer))
        )
    page = page.order_by(newest_first)
    if not stored_of:
        return Prepared(page, dialect)
    no_stored = [cast(null(), col.type).label(f"stored_{col.name}") for col in _STORED_COLUMNS]
    # A subquery: SQLite takes no ORDER BY or LIMIT in a part of a UNION.
    walked = page.add_columns(*no_stored).subquery("page")
    stored = select(*[null()] * len(_WALKED_COLUMNS), *_STORED_COLUMNS).where(
        B.c.thread_id == bindparam("thread_id"),
        B.c.checkpoint_ns == bindparam("checkpoint_ns"),
        B.c.channel.in_(slots("channel", stored_of, B.c.channel.type)),
    )
    both: CompoundSelect[Any] = union_all(select(walked), stored)
    return Prepared(both.order_by(literal_column("checkpoint_id").desc()), dialect)


@dataclass
class WalkPage:
    """The checkpoints one `_walk_statement` found, by id, in its order,
    and the (channel, version) pairs of the channels asked that have a
    stored value."""

    rows: dict[str, Row]
    stored: set[tuple[str, str]]


def _walk_page(
    conn: Connection,
    at: Address,
    start_id: str,
    size: int,
    keyed: bool,
    stored_of: Iterable[str] = (),
) -> WalkPage:
    """One `_walk_statement`, from ``start_id``."""
    params = {"thread_id": at.thread_id, "checkpoint_ns": at.checkpoint_ns, "start_id": start_id}
    count, channel_params = padded("channel", stored_of) if stored_of else (0, {})
    stmt = _walk_statement(conn.dialect, size, count, keyed)
    rows = stmt.rows(conn, {**params, **channel_params})
    walked = {r.checkpoint_id: r for r in rows if r.checkpoint_id is not None}
    stored = {(r.stored_channel, r.stored_version) for r in rows if r.checkpoint_id is None}
    return WalkPage(walked, stored)


@dataclass
class Seeds:
    """What a walk to the seeds found: per channel, the chain index of its
    seed, and the version of its value in a blob row (`blob_versions`) or,
    for a small value kept in its checkpoint, the value (`inline`)."""

    index: dict[str, int] = field(default_factory=dict)
    blob_versions: dict[str, str] = field(default_factory=dict)
    inline: dict[str, Any] = field(default_factory=dict)
    # The walk ended, channels unseeded, at a parent it did not find: one
    # deleted before, or while, it walked.
    cut: bool = False
    # Where the chain's checkpoints are: for each page of ids that holds
    # some, their least and greatest id in the database's order (the
    # page's, so the range holds no more than the page); and those found by
    # keys (ids out of time order), which may lie far apart.
    ranges: list[tuple[str, str]] = field(default_factory=list)
    by_key: list[str] = field(default_factory=list)


def _walk_to_seeds(
    conn: Connection, opts: Options, at: Address, below: str, channels: Iterable[str]
) -> tuple[list[str], Seeds]:
    """Walk the ancestors of checkpoint `below` until every channel has a seed.

    A seed is the nearest ancestor that stores a value for the channel (a
    `_DeltaSnapshot`, or a plain value). Returns the chain walked (ids,
    nearest first) and the seeds.

    The walk reads pages of the namespace's checkpoints, newest first from
    the one it looks for (`_walk_statement`; LangGraph's ids grow with
    time, so a parent is in the same page or the next), and follows the
    parent links through them, passing over the checkpoints of other
    branches. Where a parent is not in the page, the next page starts at
    it: one that holds no checkpoint of that id shows it is not stored.
    Once a page holds little of the chain, the next ones follow the parent
    links in SQL instead. Ids are never compared here, so the walk holds
    under any collation.

    Which versions have a value in a blob row comes with the first page
    (keys only), so the walk decodes an ancestor only when a channel it
    looks for has no version in the row's column (it may be a small value
    kept inside), and loads no blob.
    """
    remaining = set(channels)
    chain: list[str] = []
    seeds = Seeds()
    stored: set[tuple[str, str]] = set()
    # Each page read, whether by keys, and the chain's ids in it.
    pages: list[tuple[WalkPage, bool, list[str]]] = []
    wanted: str | None = below  # the next checkpoint to find (`below` is no ancestor)
    walked: set[str] = set()  # (a parent link back to one of them would never end)
    keyed = False
    while wanted is not None and remaining and wanted not in walked:
        if not pages or wanted not in pages[-1][0].rows:
            if pages:
                # Pages of ids while the chain makes up a quarter of each
                # at least; of keys from the first it does not (ids out of
                # time order, or many forks), which could take a page a step.
                page, _, in_page = pages[-1]
                keyed = keyed or len(in_page) * 4 < len(page.rows)
            size = WALK_STEPS[min(len(pages), len(WALK_STEPS) - 1)]
            page = _walk_page(conn, at, wanted, size, keyed, () if pages else remaining)
            pages.append((page, keyed, []))
            stored |= page.stored
            if wanted not in page.rows:  # not stored
                seeds.cut = wanted != below
                break
        page, _, in_page = pages[-1]
        row = page.rows[wanted]
        walked.add(wanted)
        wanted = row.parent_checkpoint_id
        if row.checkpoint_id == below:
            continue
        chain.append(row.checkpoint_id)
        in_page.append(row.checkpoint_id)
        versions = codec.blob_versions(opts.serde, row)
        inline: Mapping[str, Any] = {}
        if row.channel_versions is not None and remaining - versions.keys():
            inline = codec.stored_checkpoint(opts.serde, row)["channel_values"]
        for ch in list(remaining):
            if ch in inline:
                seeds.inline[ch] = inline[ch]
            elif ch not in versions or (ch, str(versions[ch])) not in stored:
                continue
            else:
                seeds.blob_versions[ch] = str(versions[ch])
            seeds.index[ch] = len(chain) - 1
            remaining.discard(ch)
    for page, by_key, in_page in pages:
        if by_key:
            seeds.by_key += in_page
        elif in_page:
            position = {checkpoint_id: i for i, checkpoint_id in enumerate(page.rows)}
            ordered = sorted(in_page, key=position.__getitem__)  # greatest first
            seeds.ranges.append((ordered[-1], ordered[0]))
    return chain, seeds


def _seeds_and_writes(
    conn: Connection,
    serde: SerializerProtocol,
    at: Address,
    chain: Sequence[str],
    seeds: Seeds,
    channels: Sequence[str],
    checked: bool,
) -> tuple[dict[str, Any], dict[str, list[PendingWrite]]] | None:
    """The values of the seeds in blob rows and the writes to ``channels``
    of the checkpoints of ``chain``, each list in `writes_sort_key` order:
    one statement, over the ranges of ids the walk found them in (and the
    ids it found by keys). ``checked``: None unless that one statement read
    them all and found every checkpoint of the chain still stored (see
    `get_delta_channel_history`)."""
    if not chain:  # no ancestor: no writes, and no seed (seeds are in the chain)
        return {}, {}
    versions = seeds.blob_versions

    def key_of(channel: str, version: str) -> str | None:
        return channel if versions.get(channel) == version else None

    found = _writes_and_values_in(
        conn,
        serde,
        at,
        seeds.by_key,
        versions,
        versions.values(),
        key_of,
        channels,
        stored=chain if checked else (),
        ranges=seeds.ranges,
        keep=set(chain),
    )
    if found is not None:
        return found.values, found.writes
    if checked:
        return None
    # Too many channels, ranges or ids to bind at once: each kind apart.
    writes = _load_writes(conn, serde, at, chain, channels)
    keys = codec.blob_keys(at.thread_id, at.checkpoint_ns, versions)
    return {key[2]: value for key, value in _load_blobs(conn, serde, keys).items()}, writes


def get_delta_channel_history(
    conn: Connection, opts: Options, config: RunnableConfig, channels: Sequence[str]
) -> dict[str, DeltaChannelHistory]:
    """Per channel, the writes since its nearest stored value, and that value.

    Same result as `BaseCheckpointSaver.get_delta_channel_history` (which
    reads one whole checkpoint per ancestor), from a few set-based queries:
    a page of up to `WALK_STEPS` checkpoints at each step of the walk (the
    first also finds which values could seed), then the seeds' values and
    the requested channels' writes along the chain.

    Its statements see one state of the database without a transaction
    around them (two round trips more on PostgreSQL and MySQL): the last
    one also finds the chain's checkpoints still stored, and as values and
    writes go only with their checkpoints, what it read of them is whole.
    Where a checkpoint went meanwhile (a prune, a delete), or that cannot be
    told, the history is read again on one snapshot (`transactions.snapshot`).
    """
    if not channels:
        return {}
    at = Address.of(config)
    return _on_one_state(conn, lambda checked: _delta_history(conn, opts, at, channels, checked))


def _delta_history(
    conn: Connection, opts: Options, at: Address, channels: Sequence[str], checked: bool
) -> dict[str, DeltaChannelHistory] | None:
    """`get_delta_channel_history`'s reads; ``checked``: None unless it can
    tell that they saw one state of the database."""
    target_id = at.checkpoint_id or _latest_id(conn, at)
    if target_id is None:
        return {ch: {"writes": []} for ch in channels}
    chain, seeds = _walk_to_seeds(conn, opts, at, target_id, channels)
    if checked and seeds.cut:
        return None
    found = _seeds_and_writes(conn, opts.serde, at, chain, seeds, channels, checked)
    if found is None:
        return None
    values, writes = found
    values.update(seeds.inline)
    history: dict[str, DeltaChannelHistory] = {}
    for ch in channels:
        # The seed ancestor's own writes come after its value, so they count.
        depth = seeds.index[ch] + 1 if ch in values else len(chain)
        entry: DeltaChannelHistory = {
            "writes": [
                w for cid in reversed(chain[:depth]) for w in writes.get(cid, ()) if w[1] == ch
            ]
        }
        if ch in values:
            entry["seed"] = values[ch]
        history[ch] = entry
    return history


# -- writes ------------------------------------------------------------------


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
def _insert(dialect: Dialect, table: Table, updated: tuple[str, ...] | None = None) -> Prepared:
    """`_insert_statement` of whole rows, one row per parameter set."""
    return Prepared(_insert_statement(dialect, table, updated), dialect)


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
def _chained_insert(dialect: Dialect, shape: Shape) -> Prepared:
    """The `_inserts` of `shape` as one statement (`dialects.chain` for
    more than one)."""
    inserts = _inserts(dialect, shape)
    statement = inserts[0] if len(inserts) == 1 else dialects.chain(dialect, inserts)
    return Prepared(statement, dialect)


@lru_cache(maxsize=256)
def _insert_script(dialect: Dialect, shape: Shape) -> Prepared:
    """The `_inserts` of `shape` between BEGIN and COMMIT, as one script
    (`transactions.runs_scripts`)."""
    inserts = [Prepared(insert, dialect) for insert in _inserts(dialect, shape)]
    control = transactions.control
    return Prepared.script([control(dialect, "BEGIN"), *inserts, control(dialect, "COMMIT")])


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
    dialect = conn.dialect
    if rows.size >= limits.PACKET_CHECKED_FROM and dialects.limits_statements(dialect):
        for table, updated, batch in rows.batches:
            sql = _insert(dialect, table, updated).sql
            limits.refuse_oversized(conn, table.name, sql, batch)
    if plan.form == "each":
        _insert_each(conn, rows)
    elif plan.form == "chain":
        _chained_insert(dialect, rows.shape).run(conn, _row_params(rows))
    elif transactions.runs_scripts(conn):
        try:
            _insert_script(dialect, rows.shape).run(conn, _row_params(rows))
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


def _insert_each(conn: Connection, rows: Rows) -> None:
    """Each insert's rows as one driver call."""
    for table, updated, batch in rows.batches:
        _insert(conn.dialect, table, updated).run_many(conn, batch)


def delete_threads(conn: Connection, opts: Options, thread_ids: Sequence[str]) -> None:
    """Delete everything stored for these threads."""
    for chunk in _chunks(thread_ids):
        for table in (W, B, C, T):
            execute(conn, delete(table).where(table.c.thread_id.in_(chunk)))


def _delete_checkpoints(
    conn: Connection, opts: Options, keys: Sequence[tuple[str, str, str]]
) -> None:
    """Delete these checkpoints, their writes, the blobs no checkpoint left
    in their namespaces uses, and parent links to them."""
    freed: set[tuple[str, str, str, str]] = set()
    for chunk in _chunks(keys):
        stmt = select(*CHECKPOINT_COLUMNS).where(_keys_in(_checkpoint_key(C), chunk))
        for r in execute(conn, stmt):
            freed |= codec.blob_keys(
                r.thread_id, r.checkpoint_ns, codec.blob_versions(opts.serde, r)
            )
        for table in (W, C):
            execute(conn, delete(table).where(_keys_in(_checkpoint_key(table), chunk)))
    by_ns: dict[tuple[str, str], list[str]] = defaultdict(list)
    for thread_id, ns, checkpoint_id in keys:
        by_ns[(thread_id, ns)].append(checkpoint_id)
    for (thread_id, ns), ids in by_ns.items():
        same_ns = (C.c.thread_id == thread_id, C.c.checkpoint_ns == ns)
        for chunk in _chunks(ids):
            execute(
                conn,
                update(C)
                .where(*same_ns, C.c.parent_checkpoint_id.in_(chunk))
                .values(parent_checkpoint_id=None),
            )
        for r in execute(conn, select(*CHECKPOINT_COLUMNS).where(*same_ns)):
            freed -= codec.blob_keys(thread_id, ns, codec.blob_versions(opts.serde, r))
    blob_key = (B.c.thread_id, B.c.checkpoint_ns, B.c.channel, B.c.version)
    for chunk in _chunks(freed):
        execute(conn, delete(B).where(_keys_in(blob_key, chunk)))


def delete_for_runs(conn: Connection, opts: Options, run_ids: Sequence[str]) -> None:
    """Delete the checkpoints (and their writes and blobs) of these runs."""
    keys: list[tuple[str, str, str]] = []
    for chunk in _chunks(run_ids):
        stmt = select(*_checkpoint_key(C)).where(C.c.run_id.in_(chunk))
        keys.extend(tuple(r) for r in execute(conn, stmt))
    if keys:
        _delete_checkpoints(conn, opts, keys)


def copy_thread(conn: Connection, opts: Options, source: str, target: str) -> None:
    """Copy every row of a thread (all namespaces, same checkpoint ids)."""
    if source == target:
        raise ValueError("copy_thread needs two different thread ids")
    exists = execute(conn, select(literal(1)).where(C.c.thread_id == target).limit(1)).first()
    if exists:
        raise ValueError(
            f"copy_thread target thread {target!r} already has checkpoints; "
            "delete it first (delete_thread) or choose a new thread id"
        )
    for table in (C, B, W):
        others = [c for c in table.c if c.name != "thread_id"]
        execute(
            conn,
            table.insert().from_select(
                ["thread_id", *(c.name for c in others)],
                select(literal(target, table.c.thread_id.type), *others).where(
                    table.c.thread_id == source
                ),
            ),
        )
    policies.touch(conn, opts.policies, target)


def prune_keep_latest(conn: Connection, opts: Options, thread_id: str) -> None:
    """Keep the latest checkpoint of each namespace of a thread, and what it
    needs: its writes, its blobs, and, for `DeltaChannel`s whose latest
    value is not a snapshot, the ancestors (and their writes) back to the
    nearest snapshot, which reconstruction replays.

    A subgraph *call*'s namespace (``node:<task id>``) goes entirely once
    the root checkpoint it started from is itself pruned: it is history of
    that call, not state a later call resumes from.
    """
    # In the database's order of ids (its collation), as `get_tuple` finds
    # a namespace's latest: each namespace's last row is its head.
    rows = execute(
        conn,
        select(C.c.checkpoint_ns, C.c.checkpoint_id, C.c.metadata_json)
        .where(C.c.thread_id == thread_id)
        .order_by(C.c.checkpoint_ns, C.c.checkpoint_id),
    ).all()
    heads = {r.checkpoint_ns: r for r in rows}
    kept = {(ns, h.checkpoint_id) for ns, h in heads.items()}
    for ns, head in heads.items():
        counters = json.loads(head.metadata_json.get(COUNTERS_KEY, "{}")) or {}
        if counters:
            at = Address(thread_id, ns)
            chain, _ = _walk_to_seeds(conn, opts, at, head.checkpoint_id, counters)
            kept |= {(ns, cid) for cid in chain}
    # A call's root is its parents[""]; it is finished once the root graph has
    # moved past it. (A root newer than the root head is not saved yet: runs
    # save in the background, and a call can commit before its root does.)
    root_head = heads[""].checkpoint_id if "" in heads else None
    root_order = {r.checkpoint_id: i for i, r in enumerate(rows) if r.checkpoint_ns == ""}
    calls = set()
    for ns, head in heads.items():
        root = (json.loads(head.metadata_json.get(PARENTS_KEY, "{}")) or {}).get("")
        if ":" not in ns or not root or not root_head or ("", root) in kept:
            continue
        if root in root_order:
            finished = root_order[root] < root_order[root_head]
        else:  # gone, or not saved yet: the database compares
            finished = _comes_before(conn, root, root_head)
        if finished:
            calls.add(ns)
    doomed = [
        (thread_id, r.checkpoint_ns, r.checkpoint_id)
        for r in rows
        if r.checkpoint_ns in calls or (r.checkpoint_ns, r.checkpoint_id) not in kept
    ]
    if doomed:
        _delete_checkpoints(conn, opts, doomed)
    # Writes saved after their checkpoint was deleted (LangGraph saves writes
    # in the background) belong to no checkpoint: older than the head and not
    # kept. Writes newer than the head may be a checkpoint's not saved yet.
    for ns, head in heads.items():
        orphans = (
            []
            if ns in calls
            else [  # a finished call's writes all go
                W.c.checkpoint_id < head.checkpoint_id,
                W.c.checkpoint_id.not_in([cid for n, cid in kept if n == ns]),
            ]
        )
        execute(
            conn, delete(W).where(W.c.thread_id == thread_id, W.c.checkpoint_ns == ns, *orphans)
        )


def _comes_before(conn: Connection, first: str, second: str) -> bool:
    """Whether checkpoint id ``first`` comes before ``second`` in the
    database's order of ids (its collation, which Python's may not be)."""
    key = C.c.checkpoint_id.type
    earlier = bindparam("first", first, type_=key) < bindparam("second", second, type_=key)
    return bool(execute(conn, select(earlier)).scalar())


def sweep_expired(conn: Connection, opts: Options, limit: int, strategy: Strategy) -> int:
    """Handle up to ``limit`` expired threads in this transaction: delete
    them, or prune them to their latest checkpoints (``keep_latest``).
    Returns how many it handled."""
    expired = policies.expired_threads(conn, opts.policies, limit)
    if not expired:
        return 0
    if strategy == "delete":
        delete_threads(conn, opts, expired)
    else:
        for thread_id in expired:
            prune_keep_latest(conn, opts, thread_id)
        policies.unexpire(conn, expired)
    return len(expired)


def set_thread_ttl(
    conn: Connection, opts: Options, thread_id: str, minutes: float | None | str
) -> None:
    """See `policies.set_thread_ttl`."""
    policies.set_thread_ttl(conn, opts.policies, thread_id, minutes)
