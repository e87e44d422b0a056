"""The reads of whole checkpoints: `get_tuple` and the pages of a `list`."""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, NamedTuple

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import CheckpointTuple, PendingWrite, get_checkpoint_id
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    CompoundSelect,
    Connection,
    Dialect,
    Integer,
    Select,
    bindparam,
    select,
    true,
    tuple_,
    union_all,
)

from sqlsaver import codec, dialects, policies, schemas
from sqlsaver.codec import Address
from sqlsaver.execution.prepared import Prepared
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import writes as W
from sqlsaver.ops.lookups import (
    CHECKPOINT_COLUMNS,
    VALUE_COLUMNS,
    WRITE_COLUMNS,
    Options,
    Row,
    _checkpoint_key,
    _load_blobs,
    _load_writes,
    _on_one_state,
    _rows_by_keys,
    _same_checkpoint,
    _writes_and_values_in,
    checkpoint_key_of,
    write_of,
)
from sqlsaver.ops.union import Layout, named
from sqlsaver.policies import Visibility

# Rows a `list` page holds at most: bounds memory however large the thread.
PAGE_SIZE = 100


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
    keys = map(checkpoint_key_of, rows)
    grouped: dict[tuple[str, str, str], list[Sequence[Any]]] = defaultdict(list)
    for r in _rows_by_keys(conn, _checkpoint_key(W), WRITE_COLUMNS, keys):
        grouped[checkpoint_key_of(r)].append(write_of(r))
    return {k: codec.pending_writes(serde, group) for k, group in grouped.items()}


def _assemble(
    conn: Connection, serde: SerializerProtocol, found: Found, checked: bool = False
) -> list[CheckpointTuple] | None:
    """The tuples of what a `_tuples_statement` found. Where it found the
    checkpoints alone, their writes and channel values take one statement
    more (`_writes_and_values`; ``checked``: None unless it found the
    checkpoints still stored); where it joined them (PostgreSQL), those of
    checkpoints whose versions are not in their column take one more."""
    rows, writes, blob_values = found.rows, found.writes, found.values
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
            writes.get(checkpoint_key_of(r), []),
        )
        for r, s, row_keys in zip(rows, stored, keys, strict=True)
    ]


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


# The rows of a `_tuples_statement`: a checkpoint's `CHECKPOINT_COLUMNS`; a
# write's checkpoint key and `WRITE_COLUMNS` (``write_<name>``); a value's
# thread, namespace and `VALUE_COLUMNS` (``value_<name>``). The values'
# NULLs are cast: the third branch's blob is bytea, the others' NULLs would
# be text (see `Layout.columns`).
TUPLE_ROWS = Layout(
    {
        **{c.name: c.type for c in CHECKPOINT_COLUMNS},
        **{f"write_{c.name}": c.type for c in WRITE_COLUMNS},
        **{f"value_{c.name}": c.type for c in VALUE_COLUMNS},
    },
    cast=[f"value_{c.name}" for c in VALUE_COLUMNS],
)
_TUPLE_WRITE = operator.attrgetter(*(f"write_{c.name}" for c in WRITE_COLUMNS))


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
    checkpoints = TUPLE_ROWS.branch(named(c.c))
    writes = TUPLE_ROWS.branch(
        {**named(_checkpoint_key(c)), **named(WRITE_COLUMNS, "write_")}
    ).select_from(c.join(W, _same_checkpoint(W, c)))
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

    values = TUPLE_ROWS.branch(
        {
            "thread_id": referenced.c.thread_id,
            "checkpoint_ns": referenced.c.checkpoint_ns,
            "value_channel": referenced.c.key,
            "value_version": referenced.c.value,
            "value_type": looked_up(B.c.type),
            "value_blob": looked_up(B.c.blob),
        }
    )
    stmt = union_all(checkpoints, writes, values)
    return stmt.order_by(*(stmt.selected_columns[col.name].desc() for col in order))


class Found(NamedTuple):
    """A `_tuples_statement`'s rows split up."""

    rows: list[Row]  # the checkpoint rows, in order
    writes: dict[tuple[str, str, str], list[PendingWrite]]  # of each, by checkpoint key
    values: dict[tuple[str, str, str, str], Any]  # the channel values it joined, by blob key


def _found(dialect: Dialect, serde: SerializerProtocol, rows: Sequence[Row]) -> Found:
    """Split the rows of a `_tuples_statement` (or take its checkpoints:
    where it has nothing else, see `dialects.expands_json`)."""
    if not dialects.expands_json(dialect):
        return Found(list(rows), {}, {})
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
            writes[checkpoint_key_of(r)].append(_TUPLE_WRITE(r))
        else:
            checkpoints.append(r)
    pending = {k: codec.pending_writes(serde, w) for k, w in writes.items() if w}
    return Found(checkpoints, pending, values)


@cache
def _checkpoint_with_writes(
    dialect: Dialect, schema: str | None, by_id: bool, visibility: Visibility
) -> Prepared:
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
    return Prepared(_tuples_statement(dialect, chosen), dialect, schema=schema)


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
    stmt = _checkpoint_with_writes(
        conn.dialect, schemas.of(conn), bool(at.checkpoint_id), opts.policies.visibility
    )
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
    schema: str | None,
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
    return Prepared(_tuples_statement(dialect, chosen, order), dialect, schema=schema)


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
        schemas.of(conn),
        pinned,
        query.before_id is not None,
        query.after is not None,
        tuple(value is None for _, value in query.filter),
        opts.policies.visibility,
    )
    found, page = _read_tuples(conn, opts.serde, lambda: stmt.rows(conn, params))
    rows = found.rows
    remaining = None if query.remaining is None else query.remaining - len(rows)
    # No next page after a short one, nor once the limit is reached (which
    # would take a connection only to find it has nothing to do).
    if len(rows) < size or remaining == 0:
        return page, None
    last = rows[-1]
    return page, replace(
        query, after=tuple(getattr(last, c.name) for c in order), remaining=remaining
    )
