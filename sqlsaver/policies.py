"""Shallow mode and TTL: policies that shape the same operations.

Neither is a subclass or a second set of SQL. The operations in `ops` read
the saver's `Policies` and, where a policy is on, add a predicate (expired
threads are invisible) or a follow-up statement in the same transaction
(the thread's expiry moves on; a shallow `put` trims what came before).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Dialect,
    Double,
    bindparam,
    case,
    exists,
    null,
    or_,
    select,
    update,
)

from sqlsaver import dialects
from sqlsaver.execution.prepared import execute
from sqlsaver.models import checkpoints as C
from sqlsaver.models import threads as T

Strategy = Literal["delete", "keep_latest"]


@dataclass(frozen=True)
class TTL:
    """A thread-level time-to-live, in LangGraph Platform's vocabulary.

    A thread expires ``default_ttl`` minutes after its last write (or read,
    with ``refresh_on_read``). Expired threads are invisible at once; sweeps
    (`sweep_ttl`, `start_ttl_sweeper`, ``python -m sqlsaver sweep``) then
    delete them, or with ``strategy="keep_latest"`` prune them to their
    latest checkpoint per namespace.
    """

    default_ttl: float | None = None
    strategy: Strategy = "delete"
    refresh_on_read: bool = False
    sweep_interval_minutes: float | None = None
    sweep_limit: int = 1000

    def __post_init__(self) -> None:
        if self.default_ttl is not None and not (
            self.default_ttl > 0 and math.isfinite(self.default_ttl)
        ):
            raise ValueError(
                f"ttl default_ttl must be a positive number of minutes, got {self.default_ttl!r}"
            )
        if self.strategy not in ("delete", "keep_latest"):
            raise ValueError(
                f"ttl strategy must be 'delete' or 'keep_latest', got {self.strategy!r}"
            )
        if self.sweep_interval_minutes is not None and not self.sweep_interval_minutes > 0:
            raise ValueError(
                f"ttl sweep_interval_minutes must be positive, got {self.sweep_interval_minutes!r}"
            )
        if not (isinstance(self.sweep_limit, int) and self.sweep_limit > 0):
            raise ValueError(
                f"ttl sweep_limit must be a positive integer, got {self.sweep_limit!r}"
            )

    @classmethod
    def of(cls, ttl: TTL | Mapping[str, Any] | None) -> TTL | None:
        """A `TTL` from a saver's ``ttl=`` option (a dict, as in langgraph.json)."""
        if ttl is None or isinstance(ttl, TTL):
            return ttl
        unknown = set(ttl) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown ttl settings {sorted(unknown)}; use {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**ttl)


# A thread's own TTL: minutes, `NEVER`, or back to the saver's default.
NEVER: float = 0.0


@dataclass(frozen=True)
class Policies:
    """What shapes the saver's operations besides the serializer."""

    shallow: bool = False
    ttl: TTL | None = None
    # Seconds since the epoch, UTC. None: the database's clock, so every host
    # of an app agrees on when a thread expires.
    clock: Callable[[], float] | None = None

    @property
    def visibility(self) -> Visibility:
        return (self.ttl.strategy if self.ttl else None, self.clock is None)

    @property
    def refreshes_on_read(self) -> bool:
        return self.ttl is not None and self.ttl.refresh_on_read

    def now(self, dialect: Dialect) -> ColumnElement[float]:
        """The current time in SQL: the database's clock, or the injected
        clock's reading as the ``now`` parameter (see `params`)."""
        if self.clock is not None:
            return bindparam("now", type_=Double)
        return dialects.epoch_now(dialect)

    def params(self) -> dict[str, float]:
        """Parameters the statements built with `now` need."""
        return {} if self.clock is None else {"now": float(self.clock())}


# What of the policies shapes a query's SQL: the TTL strategy (None: no TTL)
# and whether "now" is the database's clock. Hashable, to key cached statements.
Visibility = tuple[Strategy | None, bool]


def visible(visibility: Visibility, dialect: Dialect) -> ColumnElement[bool] | None:
    """The checkpoints `get_tuple` and `list` may return, or None for all.

    With a TTL, an expired thread is gone at once, before any sweep: all of
    it (``delete``), or all but its latest checkpoint per namespace, which is
    what the sweep will keep (``keep_latest``).
    """
    strategy, database_clock = visibility
    if strategy is None:
        return None
    now = dialects.epoch_now(dialect) if database_clock else bindparam("now", type_=Double)
    expired = exists(
        select(T.c.thread_id).where(T.c.thread_id == C.c.thread_id, T.c.expires_at <= now)
    )
    if strategy == "delete":
        return ~expired
    newer = C.alias("newer")
    is_latest = ~exists(
        select(newer.c.checkpoint_id).where(
            newer.c.thread_id == C.c.thread_id,
            newer.c.checkpoint_ns == C.c.checkpoint_ns,
            newer.c.checkpoint_id > C.c.checkpoint_id,
        )
    )
    return or_(~expired, is_latest)


def touch(conn: Connection, policies: Policies, thread_id: str) -> None:
    """Move a thread's expiry on after a write (or a read, if asked): one
    upsert. The thread's own TTL (`set_thread_ttl`) wins over the default;
    `NEVER` pins it."""
    ttl = policies.ttl
    if ttl is None:
        return
    params: dict[str, Any] = {
        "thread_id": thread_id,
        "default_seconds": None if ttl.default_ttl is None else ttl.default_ttl * 60,
        **policies.params(),
    }
    execute(conn, _touch_statement(conn.dialect, policies.clock is None), params)


@cache
def _touch_statement(dialect: Dialect, database_clock: bool) -> Any:
    now = dialects.epoch_now(dialect) if database_clock else bindparam("now", type_=Double)
    default_expiry = now + bindparam("default_seconds", type_=Double)
    return dialects.upsert_expressions(
        dialect,
        T,
        {"thread_id": bindparam("thread_id"), "expires_at": default_expiry, "updated_at": now},
        lambda _proposed: {
            "expires_at": case(
                (T.c.ttl_minutes.is_(None), default_expiry),
                (T.c.ttl_minutes <= NEVER, null()),
                else_=now + T.c.ttl_minutes * 60,
            ),
            "updated_at": now,
        },
    )


def set_thread_ttl(
    conn: Connection, policies: Policies, thread_id: str, minutes: float | None | str
) -> None:
    """Give one thread its own TTL (see `SQLSaver.set_thread_ttl`)."""
    ttl_minutes: float | None
    if minutes == "default":
        ttl_minutes = None
    elif minutes is None:
        ttl_minutes = NEVER
    elif isinstance(minutes, (int, float)) and minutes > 0 and math.isfinite(minutes):
        ttl_minutes = float(minutes)
    else:
        raise ValueError(
            f"a thread's TTL is a positive number of minutes, None (never expires) or "
            f"'default', got {minutes!r}"
        )
    now = policies.now(conn.dialect)
    execute(
        conn,
        dialects.upsert_expressions(
            conn.dialect,
            T,
            {
                "thread_id": thread_id,
                "ttl_minutes": ttl_minutes,
                "expires_at": None,
                "updated_at": now,
            },
            lambda inserted: {"ttl_minutes": inserted.ttl_minutes},
        ),
        policies.params(),
    )
    touch(conn, policies, thread_id)


def expired_threads(conn: Connection, policies: Policies, limit: int) -> list[str]:
    """Up to ``limit`` expired threads, oldest expiry first, locked for this
    transaction; threads another sweeper has locked are skipped, so several
    sweepers share the work instead of repeating it."""
    stmt = (
        select(T.c.thread_id)
        .where(T.c.expires_at <= policies.now(conn.dialect))
        .order_by(T.c.expires_at)
        .limit(limit)
    )
    stmt = dialects.lock_skipping_locked(conn.dialect, stmt)
    return list(execute(conn, stmt, policies.params()).scalars())


def unexpire(conn: Connection, thread_ids: list[str]) -> None:
    """After a ``keep_latest`` sweep the thread lives on, not expired until
    its next write moves its expiry on again."""
    execute(conn, update(T).where(T.c.thread_id.in_(thread_ids)).values(expires_at=None))
