"""What sqlsaver uses of SQLAlchemy below its public API: three attributes,
and the greenlet bridge its asyncio extension is built on.

Each stands where the public API has no spelling for the fact, or costs
time on every statement (the number is beside it). They live here alone,
and ``tests/test_sqlalchemy_private.py`` checks each on the lowest and the
newest SQLAlchemy that pyproject.toml declares (``nox -s lowest``,
``nox -s newest``): a renamed attribute fails there, not silently here.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from sqlalchemy import Connection, Dialect

# The greenlet bridge (`sqlalchemy.util`, which SQLAlchemy documents only
# through `AsyncConnection.run_sync`): `greenlet_spawn` runs sync code in a
# greenlet from a coroutine, and `await_` awaits from inside that code, as
# SQLAlchemy's async drivers do. `AsyncRunner` runs each operation through
# it: one spawn per operation, where `run_sync` with an `AsyncConnection`
# of its own would take three (connect, run, close).
from sqlalchemy.util import greenlet_spawn

try:  # SQLAlchemy 2.1 and later
    from sqlalchemy.util import await_
except ImportError:  # 2.0
    from sqlalchemy.util import await_only as await_

__all__ = ["await_", "dialect_copy", "engine_isolation", "greenlet_spawn", "has_listeners"]


def engine_isolation(dialect: Dialect) -> str | None:
    """The isolation level an engine was created with
    (``create_engine(..., isolation_level=...)``), if any.

    No public spelling: ``Engine.get_execution_options()`` holds only a
    level set by ``execution_options``, and ``Connection.get_isolation_level()``
    asks a connection (a round trip on PostgreSQL and MySQL). Needed before
    any connection exists: how a saver's reads and writes run is decided
    when it is made (`transactions.read_options`)."""
    return cast(str | None, getattr(dialect, "_on_connect_isolation_level", None))


def dialect_copy(dialect: Dialect) -> Dialect:
    """A copy of a dialect that may be changed (paramstyle, preparer)
    without touching the original's memos of type processors, which a copy
    would otherwise share (``_type_memos``: a literal's processor consults
    the preparer). The public way to another paramstyle is an engine of its
    own (``create_engine(..., paramstyle=...)``), with a pool of its own;
    the copy compiles `psycopg_raw`'s statements for the caller's engine
    (a `put_writes` of ten writes on psycopg: 0.93-0.99 of `PostgresSaver`'s
    time with them, 1.39 without)."""
    copied = copy.copy(dialect)
    copied.__dict__.pop("_type_memos", None)
    return copied


def has_listeners(conn: Connection) -> bool:
    """Whether any event listener at all is set on this connection or its
    engine: SQLAlchemy's own test (``_has_events``) before it looks at the
    listeners of a kind. `prepared.observed` asks it before every statement:
    0.22 us, where looking at ``conn.dispatch`` first takes 0.60 us."""
    return bool(cast(Any, conn)._has_events or cast(Any, conn.engine)._has_events)
