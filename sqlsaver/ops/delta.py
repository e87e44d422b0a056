"""The parent-chain walk: `get_delta_channel_history`, and what a prune keeps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import DeltaChannelHistory, PendingWrite
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    CompoundSelect,
    Connection,
    Dialect,
    Integer,
    bindparam,
    literal_column,
    select,
    union_all,
)

from sqlsaver import codec, schemas
from sqlsaver.codec import Address
from sqlsaver.execution.prepared import Prepared, padded, slots
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.ops.lookups import (
    Options,
    Row,
    _latest_id,
    _load_blobs,
    _load_writes,
    _on_one_state,
    _same_checkpoint,
    _writes_and_values_in,
)
from sqlsaver.ops.union import Layout, named

# Checkpoints read by the pages of a parent-chain walk: few first (a
# `DeltaChannel` is seeded every `snapshot_frequency` updates, 100 by
# default, so its seed is often near), more at each further page.
WALK_STEPS = (32, 128, 512)


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
# The rows of a `_walk_statement` that also finds stored values: a
# checkpoint's `_WALKED_COLUMNS`, or a value's `_STORED_COLUMNS`
# (``stored_<name>``). The NULLs of these are cast: the page is a subquery,
# and a type given in Python alone (`type_coerce`) would not reach the
# union's columns in SQL.
_WALK_ROWS = Layout(
    {
        **{c.name: c.type for c in _WALKED_COLUMNS},
        **{f"stored_{c.name}": c.type for c in _STORED_COLUMNS},
    },
    cast=[f"stored_{c.name}" for c in _STORED_COLUMNS],
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
def _walk_statement(
    dialect: Dialect, schema: str | None, size: int, stored_of: int, keyed: bool
) -> Prepared:
    """A page of a parent-chain walk: up to ``size`` checkpoints of a
    namespace (`_WALKED_COLUMNS`), newest first in the database's order of
    ids. Those from ``start_id`` down (one range of the primary key, read
    backwards), or with ``keyed``, the chain of parents from ``start_id``
    on (`_chain_of_keys`), for ids out of time order. With ``stored_of``
    channels (`slots` ``channel_<i>``), the same statement also returns
    which versions of theirs have a stored value (`_STORED_COLUMNS`, keys
    only; see `_WALK_ROWS`)."""
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
        return Prepared(page, dialect, schema=schema)
    # A subquery: SQLite takes no ORDER BY or LIMIT in a part of a UNION.
    walked = page.with_only_columns(*_WALK_ROWS.columns(named(_WALKED_COLUMNS))).subquery("page")
    stored = _WALK_ROWS.branch(named(_STORED_COLUMNS, "stored_")).where(
        B.c.thread_id == bindparam("thread_id"),
        B.c.checkpoint_ns == bindparam("checkpoint_ns"),
        B.c.channel.in_(slots("channel", stored_of, B.c.channel.type)),
    )
    both: CompoundSelect[Any] = union_all(select(walked), stored)
    newest: Any = literal_column("checkpoint_id").desc()
    return Prepared(both.order_by(newest), dialect, schema=schema)


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
    stmt = _walk_statement(conn.dialect, schemas.of(conn), size, count, keyed)
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
