"""Deletes, copies, prunes and TTL sweeps: the maintenance of threads."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, delete, literal, select, update

from sqlsaver import codec, dialects, policies
from sqlsaver.codec import Address
from sqlsaver.execution.prepared import execute
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import threads as T
from sqlsaver.models import writes as W
from sqlsaver.ops.delta import _walk_to_seeds
from sqlsaver.ops.lookups import (
    CHECKPOINT_COLUMNS,
    Options,
    _checkpoint_key,
    _chunks,
    _keys_in,
    checkpoint_key_of,
)
from sqlsaver.policies import Strategy

COUNTERS_KEY = dialects.canonical_key("counters_since_delta_snapshot")
PARENTS_KEY = dialects.canonical_key("parents")


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
        keys.extend(map(checkpoint_key_of, execute(conn, stmt)))
    if keys:
        _delete_checkpoints(conn, opts, keys)


def copy_thread(conn: Connection, opts: Options, source: str, target: str) -> None:
    """Copy every row of a thread (all namespaces, same checkpoint ids).

    A target that already holds exactly the source's checkpoints is a copy
    made before, and is left as it is: the runner runs an operation again
    when its connection dies, which may be after its COMMIT took effect."""
    if source == target:
        raise ValueError("copy_thread needs two different thread ids")
    exists = execute(conn, select(literal(1)).where(C.c.thread_id == target).limit(1)).first()
    if exists:
        if _checkpoints_of(conn, target) == _checkpoints_of(conn, source):
            return
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


def _checkpoints_of(conn: Connection, thread_id: str) -> set[tuple[str, str]]:
    """The (namespace, id) of every checkpoint of a thread."""
    stmt = select(C.c.checkpoint_ns, C.c.checkpoint_id).where(C.c.thread_id == thread_id)
    return {(r.checkpoint_ns, r.checkpoint_id) for r in execute(conn, stmt)}


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
