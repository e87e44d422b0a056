"""psycopg: its raw cursors, and the errors that mean a lost connection.

Raw cursors: statements with PostgreSQL's own ``$n`` placeholders, sent as
they are.

psycopg's default cursor rewrites ``%(name)s`` placeholders into ``$n`` at
each execute by a regular expression over the whole statement, and keeps
what it made only for statements of up to 4096 characters and 50
parameters: each run of a wider insert or a longer ``IN`` list was parsed
again, which cost more than its round trip (a `put_writes` of ten writes:
1.39 times `PostgresSaver`'s time; 0.93-0.99 with raw cursors). `Prepared`
compiles hot statements for psycopg with `native_placeholders` and runs
them on `raw_cursor` (sync) or `awaited_raw_cursor` (async, under
SQLAlchemy's greenlet bridge).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Dialect
from sqlalchemy.pool import PoolProxiedConnection

from sqlsaver.execution.sqlalchemy_private import await_, dialect_copy


def raw_cursor(pooled: PoolProxiedConnection) -> Any:
    """A `psycopg.RawCursor` (``$n`` placeholders) on a psycopg connection."""
    import psycopg  # only where psycopg runs

    return psycopg.RawCursor(cast(psycopg.Connection[Any], pooled.driver_connection))


def awaited_raw_cursor(pooled: PoolProxiedConnection) -> Any:
    """A `psycopg.AsyncRawCursor` on the psycopg connection under
    SQLAlchemy's async adapter, driven as `_Awaited`."""
    import psycopg

    connection = cast(psycopg.AsyncConnection[Any], pooled.driver_connection)
    return _Awaited(psycopg.AsyncRawCursor(connection))


class _Awaited:
    """An async cursor driven from SQLAlchemy's greenlet bridge (where
    `runner.AsyncRunner` runs every operation): each call awaited in place,
    as SQLAlchemy's own adapter does with the cursors it makes."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    def execute(self, sql: str, params: Any) -> None:
        await_(self._cursor.execute(sql, params))

    def executemany(self, sql: str, params: Any) -> None:
        await_(self._cursor.executemany(sql, params))

    def nextset(self) -> Any:
        return self._cursor.nextset()

    def fetchall(self) -> list[Any]:
        return cast(list[Any], await_(self._cursor.fetchall()))

    def close(self) -> None:
        await_(self._cursor.close())


def default_cursors(pooled: PoolProxiedConnection) -> bool:
    """Whether a psycopg connection makes psycopg's own cursors: one given
    another ``cursor_factory`` (such as ``ClientCursor``) keeps it, and
    runs the dialect's own form of a statement (as a watched one does)."""
    import psycopg

    factory = getattr(pooled.driver_connection, "cursor_factory", None)
    return factory is psycopg.Cursor or factory is psycopg.AsyncCursor


def native_placeholders(dialect: Dialect) -> Dialect | None:
    """For psycopg: the dialect, copied to write PostgreSQL's own ``$1``
    placeholders, which `psycopg.RawCursor` sends as they are (see the
    module's doc); None for other drivers, and psycopg before 3.2."""
    if dialect.name != "postgresql" or dialect.driver != "psycopg":
        return None
    if not hasattr(dialect.loaded_dbapi, "RawCursor"):  # psycopg before 3.2
        return None
    native = dialect_copy(dialect)
    native.paramstyle = "numeric_dollar"
    native.positional = True
    # Which also stops doubling "%", as only the "format" styles need.
    native.identifier_preparer = dialect.preparer(native)
    return native


def connection_lost(error: BaseException | None) -> bool:
    """Whether a psycopg error says its connection can no longer be used,
    where SQLAlchemy's psycopg dialect may not see it: that dialect asks
    only whether libpq calls the connection closed or broken, and psycopg
    raises some failures before libpq does (a socket its poll finds closed:
    "connection socket closed"; a command cut off halfway, which leaves the
    connection refusing the next: "another command is already in
    progress"). Such an error is a psycopg `OperationalError` without a
    SQLSTATE: every error the server reports carries one. (Other drivers:
    SQLAlchemy's own judgment, `Dialect.is_disconnect`.)"""
    if error is None or type(error).__module__.split(".")[0] != "psycopg":
        return False
    import psycopg

    return isinstance(error, psycopg.OperationalError) and error.sqlstate is None
