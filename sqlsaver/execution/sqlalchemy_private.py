"""The three SQLAlchemy attributes below its public API that sqlsaver reads.

Each has no public spelling, and each saves time or a round trip that the
public API would spend (measured beside it). They live here alone, and
``tests/test_sqlalchemy_private.py`` checks each on the lowest and the
newest SQLAlchemy that pyproject.toml declares (``nox -s lowest``,
``nox -s newest``): a renamed attribute fails there, not silently here.
"""

from __future__ import annotations

import copy
from typing import Any, cast

from sqlalchemy import Connection, Dialect


def engine_isolation(dialect: Dialect) -> str | None:
    """The isolation level an engine was created with
    (``create_engine(..., isolation_level=...)``), if any.

    Public alternative: ``Connection.get_isolation_level()``, a round trip
    per connection (and it reports the driver's level, not AUTOCOMMIT, on
    some drivers). Needed before any connection exists: whether a saver's
    reads need a transaction of their own is decided when it is made."""
    return cast(str | None, getattr(dialect, "_on_connect_isolation_level", None))


def dialect_copy(dialect: Dialect) -> Dialect:
    """A copy of a dialect that may be changed (paramstyle, preparer)
    without touching the original's memos of type processors, which a copy
    would otherwise share (``_type_memos``: a literal's processor consults
    the preparer)."""
    copied = copy.copy(dialect)
    copied.__dict__.pop("_type_memos", None)
    return copied


def has_listeners(conn: Connection) -> bool:
    """Whether any event listener at all is set on this connection or its
    engine: SQLAlchemy's own test (``_has_events``) before it looks at the
    listeners of a kind. Looking at ``conn.dispatch`` first instead costs
    ~1 us per statement, on every statement of every operation."""
    return bool(cast(Any, conn)._has_events or cast(Any, conn.engine)._has_events)
