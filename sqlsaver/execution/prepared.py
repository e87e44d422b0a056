"""Hot statements, compiled once and run straight on the driver's cursor.

The operations a graph calls at every step (`get_tuple`, `list`, `put`,
`put_writes`, the delta-history walk) run a handful of fixed statements.
`Connection.execute` spends 15-40 us of Python per statement building an
execution context, which is most of a SQLite read and a good part of a
PostgreSQL one. A `Prepared` statement is still a SQLAlchemy Core construct,
compiled by SQLAlchemy for the connection's dialect, but compiled once: each
run is one call on the DBAPI cursor plus the type conversions SQLAlchemy
would apply (`TypeEngine.bind_processor` / `result_processor`, e.g. UTF-8
keys on MySQL; but not ``Binary()``, see `_binary`). That works on the sync
drivers and, in the greenlet an async saver runs its operations in
(`runner.AsyncRunner`), on the async drivers' adapted cursors alike. On
psycopg, statements carry PostgreSQL's own ``$n`` placeholders and run on
its raw cursors (`psycopg_raw`).

A connection with ``before_cursor_execute``/``after_cursor_execute``
listeners, or ``echo``, runs them through `Connection.exec_driver_sql`
instead, so that tracing and logging see them (`observed`). Errors arrive
as SQLAlchemy's `DBAPIError` subclasses, and a dropped connection is
invalidated as `Connection.execute` would do it.

Statements must have no expanding ``IN`` parameters; `padded` builds fixed
``IN`` lists instead.
"""

from __future__ import annotations

import operator
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import Any, Protocol, cast

from sqlalchemy import BindParameter, Connection, CursorResult, Dialect, TypeDecorator, bindparam
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler

from sqlsaver.execution.psycopg_raw import (
    awaited_raw_cursor,
    connection_lost,
    default_cursors,
    native_placeholders,
    raw_cursor,
)
from sqlsaver.execution.sqlalchemy_private import has_listeners

Processor = Callable[[Any], Any]


class Prepared:
    """A Core statement compiled for one dialect, run on the raw cursor."""

    __slots__ = (
        "sql",
        "statements",
        "_positional",
        "_order",
        "_pick",
        "_binds",
        "_defaults",
        "_row",
        "_results",
        "_cursor",
        "_watched",
    )

    def __init__(
        self,
        stmt: ClauseElement,
        dialect: Dialect,
        native: bool = True,
        schema: str | None = None,
    ) -> None:
        raw = native_placeholders(dialect) if native else None
        # For sqlsaver's tables in `schema` (`sqlsaver.schemas`): rendered
        # into the SQL, as `Connection.execute` renders a connection's
        # schema_translate_map; callers cache a statement per schema.
        in_schema: dict[str, Any] = {}
        if schema is not None:
            in_schema = {"schema_translate_map": {None: schema}, "render_schema_translate": True}
        compiled = cast(SQLCompiler, stmt.compile(dialect=raw or dialect, **in_schema))
        self.sql = compiled.string
        # How a cursor is had for it, and the statement as the dialect's
        # own cursor takes it, where that differs (a watched connection
        # runs that one: `_run`).
        self._cursor: Callable[[PoolProxiedConnection], Any] = _plain_cursor
        if raw:
            self._cursor = awaited_raw_cursor if dialect.is_async else raw_cursor
        self._watched = Prepared(stmt, dialect, native=False, schema=schema) if raw else self
        self.statements = 1
        names = {bp: compiled.bind_names[bp] for bp in compiled.binds.values()}
        self._positional = compiled.positional
        self._order = tuple(compiled.positiontup or ()) if compiled.positional else ()
        self._pick = _picker(self._order)
        # Values fixed in the statement (literals), overridable by name.
        self._defaults = {n: bp.effective_value for bp, n in names.items() if not bp.required}
        self._binds: dict[str, Processor] = {}
        for bp, name in names.items():
            impl = bp.type.dialect_impl(dialect)
            process = impl.bind_processor(dialect)
            if process is not None and not _binary(impl):
                self._binds[name] = process
        columns = list(getattr(stmt, "selected_columns", ()))
        self._row: Callable[..., Any] | None = None
        self._results: tuple[tuple[int, Processor], ...] = ()
        if columns:
            row_type: Any = namedtuple("Row", [c.key for c in columns])  # type: ignore[misc]
            self._row = row_type._make
            processors = (
                c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
            )
            # Only the columns that have one: most columns need none.
            self._results = tuple((i, p) for i, p in enumerate(processors) if p is not None)

    @classmethod
    def script(cls, parts: Sequence[Prepared]) -> Prepared:
        """Statements that return no rows, sent as one query of several
        (MySQL with ``CLIENT.MULTI_STATEMENTS``): one round trip. Their
        parameters are named apart; positional ones follow the parts."""
        assert all(p._row is None for p in parts), "a script returns no rows"
        script = cls.__new__(cls)
        script.sql = ";\n".join(p.sql for p in parts)
        script.statements = sum(p.statements for p in parts)
        script._positional = parts[0]._positional
        assert all(p._positional == script._positional for p in parts)
        script._order = tuple(name for p in parts for name in p._order)
        script._pick = _picker(script._order)
        script._defaults = {k: v for p in parts for k, v in p._defaults.items()}
        script._binds = {k: v for p in parts for k, v in p._binds.items()}
        script._row, script._results = None, ()
        script._cursor, script._watched = _plain_cursor, script
        assert all(p._cursor is _plain_cursor for p in parts)
        return script

    def _params(self, params: Mapping[str, Any]) -> Any:
        values = {**self._defaults, **params} if self._defaults else params
        if self._binds:
            values = dict(values)
            for name, process in self._binds.items():
                values[name] = process(values[name])
        if self._positional:
            return self._pick(values)
        return values

    def rows(self, conn: Connection, params: Mapping[str, Any], named: bool = True) -> list[Any]:
        """Run a SELECT and return its rows: named tuples, or plain tuples
        (``named=False``: cheaper, for rows read by position)."""
        raw = _run(conn, self, params)
        assert self._row is not None, "rows() of a statement that selects nothing"
        make = self._row if named else tuple
        if not self._results:
            return [make(r) for r in raw] if named else raw
        rows = []
        for r in raw:
            values = list(r)
            for i, process in self._results:
                if values[i] is not None:  # NULL stays None (processors agree)
                    values[i] = process(values[i])
            rows.append(make(values))
        return rows

    def run(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run a statement that returns no rows."""
        _run(conn, self, params)

    def run_many(self, conn: Connection, params: Sequence[Mapping[str, Any]]) -> None:
        """Run a statement once per parameter set, as one driver call."""
        if len(params) == 1:
            self.run(conn, params[0])
            return
        _run(conn, self, params, many=True)


# The DBAPI cursor of a pooled connection.
_plain_cursor = operator.methodcaller("cursor")


def _binary(impl: Any) -> bool:
    """Whether a type is plainly binary, whose bind processor only wraps a
    value in the DBAPI's ``Binary``, which is skipped: what sqlsaver binds
    there is always `bytes` (`codec.dump`), which every driver takes as
    binary as it is. The wrapper costs a copy (PyMySQL) or a Python object
    and its dumper (psycopg). A `TypeDecorator`'s processor does work of its own (MySQL's
    UTF-8 keys), and is kept."""
    if isinstance(impl, TypeDecorator):
        return False
    try:
        return impl.python_type is bytes
    except NotImplementedError:
        return False


def _picker(order: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """The positional parameters of a statement from its named values, in
    its order: one `itemgetter` call (a tuple of one or none made apart,
    where `itemgetter` would return the bare value or cannot be made)."""
    if len(order) > 1:
        return operator.itemgetter(*order)
    if order:
        (name,) = order
        return lambda values: (values[name],)
    return lambda values: ()


def observed(conn: Connection) -> bool:
    """Whether anyone watches this connection's statements: cursor-execute
    listeners (tracing, such as OpenTelemetry's) or ``echo``."""
    if conn.engine.echo:
        return True
    if not has_listeners(conn):
        return False
    dispatch = conn.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)


class Tap(Protocol):
    """Told of each statement sqlsaver runs (`Prepared` and `execute`),
    just before and just after it: where the fault tests end a connection
    (`tests/test_fault_matrix.py`). An error ``after`` raises counts as the
    statement's own (as a reply lost after the server did the work)."""

    def before(self, conn: Connection, sql: str) -> None: ...

    def after(self, conn: Connection, sql: str) -> None: ...


# None but in the fault tests: one global read per statement.
tap: Tap | None = None


def execute(
    conn: Connection, statement: Executable, params: Mapping[str, Any] | None = None
) -> CursorResult[Any]:
    """`Connection.execute`, for the statements that are not hot enough to
    be `Prepared`: every statement sqlsaver runs goes through this module."""
    if tap is None:
        return conn.execute(statement, params)
    sql = str(statement)
    _tapped(conn, sql, tap.before)
    result = conn.execute(statement, params)
    _tapped(conn, sql, tap.after)
    return result


def _tapped(conn: Connection, sql: str, hook: Callable[[Connection, str], None]) -> None:
    try:
        hook(conn, sql)
    except conn.dialect.loaded_dbapi.Error as error:
        raise _driver_error(conn, sql, error, None) from error


def _run(conn: Connection, stmt: Prepared, params: Any, many: bool = False) -> list[Any]:
    """Run the statement (``params`` a mapping, or with ``many`` a sequence
    of them) on the connection's DBAPI cursor and fetch what it selected,
    with driver errors turned into SQLAlchemy's, as `execute` does. A
    connection someone watches takes `exec_driver_sql` instead, so that its
    listeners and logging see the statement as usual."""
    pooled = conn.connection
    if observed(conn) or (stmt._watched is not stmt and not default_cursors(pooled)):
        assert stmt.statements == 1, "a script on a watched connection"
        watched = stmt._watched
        values = [watched._params(p) for p in params] if many else watched._params(params)
        if tap is not None:
            _tapped(conn, watched.sql, tap.before)
        result = conn.exec_driver_sql(watched.sql, values)
        rows = list(result.fetchall()) if result.returns_rows else []
        if tap is not None:
            _tapped(conn, watched.sql, tap.after)
        return rows
    values = [stmt._params(p) for p in params] if many else stmt._params(params)
    dbapi_conn = pooled.dbapi_connection
    cursor = None
    try:
        if tap is not None:
            tap.before(conn, stmt.sql)
        cursor = stmt._cursor(pooled)  # fails too on a connection closed under us
        if many:
            cursor.executemany(stmt.sql, values)
        else:
            cursor.execute(stmt.sql, values)
        for _ in range(stmt.statements - 1):  # a script: each statement's result in turn
            cursor.nextset()
        rows = list(cursor.fetchall()) if cursor.description is not None else []
        if tap is not None:
            tap.after(conn, stmt.sql)
    except conn.dialect.loaded_dbapi.Error as error:
        raise _driver_error(conn, stmt.sql, error, cursor, dbapi_conn) from error
    except BaseException:
        _close_quietly(cursor)
        raise
    # The statement is done and its rows are fetched: a connection lost
    # since (SQLite's closed under it) is the next statement's to find, not
    # a driver error of this one's escaping unconverted.
    _close_quietly(cursor)
    return rows


def _driver_error(
    conn: Connection, sql: str, error: Any, cursor: Any, dbapi_conn: Any = None
) -> DBAPIError:
    """A driver's error as SQLAlchemy's, with the connection invalidated
    where the error says it is gone: what `Connection.execute` does."""
    if dbapi_conn is None:
        dbapi_conn = conn.connection.dbapi_connection
    disconnect = conn.dialect.is_disconnect(error, dbapi_conn, cursor) or connection_lost(error)
    _close_quietly(cursor)
    if disconnect and not conn.invalidated:
        conn.invalidate(error)
    return cast(
        DBAPIError,
        DBAPIError.instance(
            sql,
            None,
            error,
            conn.dialect.loaded_dbapi.Error,
            dialect=conn.dialect,
            connection_invalidated=disconnect,
        ),
    )


def _close_quietly(cursor: Any) -> None:
    """Close the cursor of a statement that failed or was interrupted (a
    cancelled task): an error of closing it, on a connection the failure
    may have broken, must not stand in for what happened."""
    if cursor is None:
        return
    try:
        cursor.close()
    except Exception:
        pass


def padded(name: str, values: Iterable[Any]) -> tuple[int, dict[str, Any]]:
    """Values for ``column IN (...)``, their count rounded up to a power of
    two (the last value repeated) so that a few compiled statements serve
    every length: the count, and the values by parameter name (`slots`)."""
    items = sorted(set(values))
    count = len(items)
    if count == 1:  # one checkpoint, channel or version: most reads
        return 1, {_slot_names(name, 1)[0]: items[0]}
    size = 1 << (count - 1).bit_length() if count > 1 else 1
    if size != count:
        items += items[-1:] * (size - count)
    return size, dict(zip(_slot_names(name, size), items, strict=True))


@cache
def _slot_names(name: str, count: int) -> tuple[str, ...]:
    return tuple(f"{name}_{i}" for i in range(count))


def slots(name: str, count: int, type_: Any) -> list[BindParameter[Any]]:
    """``count`` bind parameters ``<name>_<i>`` of a column's type (`padded`)."""
    return [bindparam(slot, type_=type_) for slot in _slot_names(name, count)]
