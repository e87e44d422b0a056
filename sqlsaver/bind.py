"""What a saver was given (Engine, Connection or Session; sync or async),
turned into one thing: "run this operation in the right transaction".

- An Engine: each write is its own transaction, on a pooled connection,
  or a single statement with none around it where that is atomic on its
  own (`store`, `dialects.statements_commit`); reads run on a pooled
  connection without BEGIN/COMMIT where the database allows
  (`dialects.read_options`). On sqlsaver's own engines (`from_url`), the
  connection is one the saver keeps open between operations
  (`_KeptConnections`). On SQLite, writes of one saver queue on a lock
  of the process before they take the database's: SQLite has one writer,
  and waiting on its busy timeout means sleeping in steps of milliseconds,
  where a lock hands over at once.
- A Connection or Session: the operation joins the caller's transaction and
  never commits it. Writes run inside a SAVEPOINT, so a failed write leaves
  nothing behind while the caller's transaction goes on. Calls are
  serialized, because LangGraph saves writes from background threads and a
  connection must not be used by two at once.

A transaction of the saver's own that the database aborts as a deadlock
victim runs again (`ATTEMPTS`). The first operation also checks, once, that
sqlsaver's tables are at the revision this sqlsaver needs
(`migrate.require_current`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, cast, overload

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, UnboundExecutionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from sqlsaver import dialects, migrate, ops
from sqlsaver.migrate import SchemaNotReadyError

P = ParamSpec("P")
T = TypeVar("T")

SyncTarget = Engine | Connection | Session
AsyncTarget = AsyncEngine | AsyncConnection | AsyncSession


def _not_ready(error: DBAPIError) -> SchemaNotReadyError:
    return SchemaNotReadyError(
        "sqlsaver's tables do not exist in this database. Create them once with "
        "`saver.setup()` (`await saver.setup()` for AsyncSQLSaver), or in "
        "deployment with `python -m sqlsaver upgrade --url <database url>`. "
        f"(database said: {error.orig})"
    )


# A transaction of the saver's own that the database aborts as a deadlock
# victim (or a serialization failure), or whose connection turns out to be
# dead, runs again, up to this many times in all: every operation is
# idempotent. One in a caller's transaction cannot be.
ATTEMPTS = 4


def _retryable(error: DBAPIError) -> bool:
    # A dropped connection (the pool discards it; there is no pre-ping round
    # trip per checkout) or a deadlock victim: run the transaction again.
    return error.connection_invalidated or dialects.is_retryable(error)


def _backoff(attempt: int) -> float:
    """Seconds to wait before another attempt: short, jittered, growing."""
    return random.uniform(0, 0.01 * 2**attempt)


# How an operation on an Engine runs (`_run`): a read, on a connection
# without a transaction where the database allows (`dialects.read_options`);
# a write that is one statement, atomic on its own; any other write, in a
# transaction. Writes of a saver on SQLite queue on the saver's lock.
Mode = Literal["read", "statement", "transaction"]
_READ: Mode = "read"
_STATEMENT: Mode = "statement"
_TRANSACTION: Mode = "transaction"


@overload
def _connection(engine: Engine) -> contextlib.AbstractContextManager[Connection]: ...
@overload
def _connection(engine: AsyncEngine) -> contextlib.AbstractAsyncContextManager[AsyncConnection]: ...
def _connection(engine: Any) -> Any:
    """A connection for a write: a plain one where the engine is AUTOCOMMIT
    (as sqlsaver's own are), since the operation begins and commits any
    transaction it needs itself (`dialects.atomic`, see `_Bind._invoke`)
    and ``begin()`` would only add bookkeeping (and on MySQL a COMMIT round
    trip). Otherwise ``begin()``: on an engine of the caller's, where the
    driver opens a transaction itself, it commits that one."""
    return engine.connect() if dialects.autocommit_engine(engine) else engine.begin()


_UNLOCKED = contextlib.nullcontext()


class _KeptConnections:
    """Connections of an engine kept open between operations, at most
    `KEPT` of them, each used by one operation at a time (`take`, then
    `give_back`, or `failed`).

    For sqlsaver's own engines (`dialects.keeps_connections`): a checkout
    from SQLAlchemy's pool and back costs as much Python as reading a
    checkpoint's row on SQLite, and a fifth of a write on PostgreSQL. What
    the pool does at a checkout (recycling, its invalidation after a
    disconnect, checkout events) is skipped for a kept connection, and made
    up for here:

    - A connection is kept for `LEASE` seconds at most, then goes back to
      the pool, whose next checkout recycles it if it is older than
      ``pool_recycle`` (before a proxy, or MySQL's ``wait_timeout``, drops
      it for idling).
    - After a disconnect, the idle ones are invalidated and the engine's
      pool replaced: whatever took one connection (a server restart, a
      failover) took those opened before it, as SQLAlchemy assumes when it
      invalidates its whole pool.
    - A connection is kept only as it came: in no transaction (the engine
      is AUTOCOMMIT, and every operation ends the transactions it begins).
      After an error it goes back to the pool. One still in a transaction,
      one that cannot be told clean, and one whose operation was
      interrupted (a cancelled task may leave a reply unread) are closed
      for good instead: MySQL engines' pools reset nothing on return.
    - None is kept while an operation waits for the pool (a pool smaller
      than `KEPT`, or more threads than connections): it gets one at once.
    - After a fork, the child leaves the parent's connections alone (held,
      so that the garbage collector does not return them to the child's
      pool either) and starts its engine's pool afresh: a connection must
      not cross into another process.
    """

    KEPT = 8
    LEASE = 60.0  # seconds

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._idle: list[tuple[Connection, float]] = []  # with when each was leased
        self._waiting = 0  # operations waiting in `take` for the pool
        self._closed = False
        self._pid = os.getpid()
        self._parents: list[tuple[Connection, float]] = []  # a forked child's, never used

    def take(self) -> tuple[Connection, float]:
        """A kept connection, or else one from the engine's pool; with when
        it was leased from the pool (for `give_back`)."""
        now = time.monotonic()
        with self._lock:
            if self._pid != os.getpid():
                self._forked()
            if self._idle:
                conn, leased = self._idle.pop()
                if now - leased < self.LEASE:
                    return conn, leased
            else:
                conn = None
            self._waiting += 1
        try:
            if conn is not None:  # its lease is over
                _to_pool(conn)
            return self._engine.connect(), now
        finally:
            with self._lock:
                self._waiting -= 1

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(connection, *args, **kwargs)`` on a kept connection."""
        conn, leased = self.take()
        try:
            result = fn(conn, *args, **kwargs)
        except BaseException as error:
            self.failed(conn, error)
            raise
        self.give_back(conn, leased)
        return result

    def give_back(self, conn: Connection, leased: float) -> None:
        """Keep a connection an operation has finished with, if it is clean
        and no one waits for the pool; else close it (back to the pool), or
        for good if it is in a transaction."""
        try:
            clean = _clean(conn)
            if clean and conn.in_transaction():  # `Connection.execute` began it:
                # SQLAlchemy's bookkeeping (MySQL's drivers send a ROLLBACK
                # even so, as closing the connection would).
                conn.rollback()
        except Exception:  # cannot tell: not worth keeping
            clean = False
        except BaseException:  # interrupted (a cancelled task): not leaked either
            _discard(conn)
            raise
        if not clean:
            _discard(conn)
            return
        with self._lock:
            keep = not self._closed and not self._waiting and self._pid == os.getpid()
            if keep and len(self._idle) < self.KEPT:
                self._idle.append((conn, leased))
                return
        _to_pool(conn)

    def failed(self, conn: Connection, error: BaseException) -> None:
        """An operation failed on ``conn``: it goes back to the pool if it
        is clean and the operation was not interrupted, else it is closed
        for good; after a disconnect the idle connections go with it, and
        the engine's pool is replaced."""
        if isinstance(error, Exception) and _clean(conn):
            _to_pool(conn)
        else:
            _discard(conn)
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            with self._lock:
                idle, self._idle = self._idle, []
            for other, _ in idle:
                _discard(other)
            self._engine.dispose()  # the pool's connections are as old

    def close(self) -> None:
        """Close the kept connections; later ones go back to the pool."""
        with self._lock:
            self._closed = True
            if self._pid != os.getpid():
                self._forked()
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _to_pool(conn)

    def _forked(self) -> None:
        self._parents += self._idle
        self._idle, self._pid, self._waiting = [], os.getpid(), 0
        self._engine.dispose(close=False)  # SQLAlchemy's recipe for a child


def _clean(conn: Connection) -> bool:
    """Whether a connection is usable and, by its driver's account, in no
    transaction; False where that cannot be told."""
    try:
        return not conn.invalidated and not dialects.in_transaction(conn)
    except Exception:
        return False


def _to_pool(conn: Connection) -> None:
    """Give a connection back to its pool (which resets it); close it for
    good if that fails."""
    try:
        conn.close()
    except Exception:
        _discard(conn)


def _discard(conn: Connection) -> None:
    """Close a connection for good (its pool opens a new one in its place),
    whatever state it is in; never raises."""
    try:
        conn.invalidate()
        conn.close()
    except Exception:  # already closed, or closing failed: gone either way
        pass


class _Bind:
    """What both binds share: the one-time schema check, the connections
    kept open, and running an operation on a connection of theirs."""

    def __init__(self, check_schema: bool) -> None:
        # Apps whose own migrations manage sqlsaver's tables opt out.
        self.schema_checked = not check_schema
        self._kept: _KeptConnections | None = None

    def _keep(self, engine: Engine, pre_ping: bool) -> None:
        """Keep ``engine``'s connections open between operations, where
        that pays (`dialects.keeps_connections`)."""
        if dialects.keeps_connections(engine, pre_ping):
            self._kept = _KeptConnections(engine)

    def _invoke(
        self, conn: Connection, atomic: bool | None, op: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        if not self.schema_checked:
            migrate.require_current(conn)
            self.schema_checked = True
        # On an AUTOCOMMIT engine, `begin()` opened no transaction either.
        if atomic is True or atomic is None and dialects.autocommit(conn):
            with dialects.atomic(conn):
                return op(conn, *args, **kwargs)
        return op(conn, *args, **kwargs)

    def _migrate(self, conn: Connection, op: Callable[[Connection], None]) -> None:
        with dialects.own_transaction(conn):
            op(conn)
        self.schema_checked = True


class SyncBind(_Bind):
    """Runs operations on a sync Engine, Connection or Session."""

    def __init__(self, target: SyncTarget, check_schema: bool = True) -> None:
        if not isinstance(target, (Engine, Connection, Session)):
            raise TypeError(
                "SQLSaver takes a sqlalchemy Engine, Connection or Session "
                f"(for async ones use AsyncSQLSaver), got {type(target).__name__}"
            )
        super().__init__(check_schema)
        self.target = target
        self.dialect = target.get_bind().dialect if isinstance(target, Session) else target.dialect
        self._lock = threading.RLock()
        self._writer: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if isinstance(target, Engine):
            self._read_engine = target.execution_options(**dialects.read_options(target.dialect))
            if dialects.single_writer(target.dialect):
                self._writer = threading.Lock()

    def keep_connections(self, pre_ping: bool = False) -> None:
        """Keep connections open between operations, where that pays
        (`dialects.keeps_connections`): for an engine of the saver's own
        (`from_url`; ``pre_ping``: created with ``pool_pre_ping``), released
        by `close`."""
        if isinstance(self.target, Engine):
            self._keep(self.target, pre_ping)

    def close(self) -> None:
        """Close the connections kept open (`keep_connections`)."""
        if self._kept is not None:
            self._kept.close()

    def read(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a reading ``op(connection, *args)`` in a transaction."""
        return cast(T, self._run(_READ, self._invoke, False, op, *args, **kwargs))

    def write(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a writing ``op(connection, *args)`` atomically (see module doc)."""
        # None: atomic only if the engine's begin() is no transaction.
        atomic = None if isinstance(self.target, Engine) else True
        return cast(T, self._run(_TRANSACTION, self._invoke, atomic, op, *args, **kwargs))

    def write_statement(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a writing ``op`` that the database runs as one statement,
        atomic on its own, with no transaction of the saver's around it
        where the engine allows (`dialects.statements_commit`)."""
        if isinstance(self.target, Engine) and dialects.statements_commit(self._read_engine):
            return cast(T, self._run(_STATEMENT, self._invoke, False, op, *args, **kwargs))
        return self.write(op, *args, **kwargs)

    def store(self, opts: ops.Options, rows_of: Callable[[], ops.Rows]) -> None:
        """Serialize the rows of a `put` or `put_writes` (``rows_of()``),
        then store them (`ops.store`): as one statement where that is atomic
        on its own (`ops.one_round_trip`), else in a transaction."""
        rows = rows_of()
        if not rows.batches:
            return
        write = self.write_statement if ops.one_round_trip(self.dialect, opts, rows) else self.write
        write(ops.store, opts, rows)

    def migrate(self, op: Callable[[Connection], None]) -> None:
        """Run a schema migration ``op(connection)`` (no schema check first)."""
        self._run(_TRANSACTION, self._migrate, op)

    def _run(self, mode: Mode, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            if isinstance(self.target, Engine):
                attempt = 1
                while True:
                    try:
                        if self._kept is not None:
                            # A writer queues on the lock before it takes a
                            # connection, as before a checkout from the pool.
                            with self._writer if mode != _READ else _UNLOCKED:
                                return self._kept.run(fn, *args, **kwargs)
                        if mode == _READ:
                            with self._read_engine.connect() as conn:
                                return fn(conn, *args, **kwargs)
                        # A one-statement write runs where reads do, on
                        # AUTOCOMMIT connections (`dialects.read_options`).
                        engine = self._read_engine if mode == _STATEMENT else self.target
                        with self._writer, _connection(engine) as conn:
                            return fn(conn, *args, **kwargs)
                    except DBAPIError as error:
                        if attempt == ATTEMPTS or not _retryable(error):
                            raise
                    time.sleep(_backoff(attempt))
                    attempt += 1
            with self._lock:
                if isinstance(self.target, Connection):
                    return fn(self.target, *args, **kwargs)
                return fn(self.target.connection(), *args, **kwargs)
        except DBAPIError as error:
            if dialects.is_missing_table(error):
                raise _not_ready(error) from error
            raise


class AsyncBind(_Bind):
    """Runs the same operations on an AsyncEngine, AsyncConnection or
    AsyncSession, through `run_sync` (no threads: the async driver does the
    I/O under SQLAlchemy's greenlet bridge)."""

    def __init__(self, target: AsyncTarget, check_schema: bool = True) -> None:
        if not isinstance(target, (AsyncEngine, AsyncConnection, AsyncSession)):
            raise TypeError(
                "AsyncSQLSaver takes a sqlalchemy AsyncEngine, AsyncConnection or "
                f"AsyncSession (for sync ones use SQLSaver), got {type(target).__name__}"
            )
        super().__init__(check_schema)
        self.target = target
        if isinstance(target, AsyncSession):
            # `get_bind()`, not `.bind`: SQLAlchemy 2.0 sets that attribute
            # only on a session given a bind, 2.1 always. Either way the
            # dialect is the one under the AsyncEngine.
            try:
                self.dialect = target.get_bind().dialect
            except UnboundExecutionError:
                raise TypeError(
                    "AsyncSQLSaver needs an AsyncSession bound to an AsyncEngine "
                    "(AsyncSession(engine))"
                ) from None
        else:
            self.dialect = target.dialect
        self._lock = asyncio.Lock()
        self._writer: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
        if isinstance(target, AsyncEngine):
            self._read_engine = target.execution_options(**dialects.read_options(target.dialect))
            if dialects.single_writer(target.dialect):
                self._writer = asyncio.Lock()

    def keep_connections(self, pre_ping: bool = False) -> None:
        """Keep connections open between operations (see `SyncBind`): the
        sync connections under the async ones, used as `run_sync` would."""
        if isinstance(self.target, AsyncEngine):
            self._keep(self.target.sync_engine, pre_ping)

    async def close(self) -> None:
        """Close the connections kept open (`keep_connections`)."""
        if self._kept is not None:
            await greenlet_spawn(self._kept.close)

    async def read(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a reading ``op(connection, *args)`` in a transaction."""
        return await self._run(_READ, self._invoke, False, op, *args, **kwargs)

    async def write(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a writing ``op(connection, *args)`` atomically (see module doc)."""
        atomic = None if isinstance(self.target, AsyncEngine) else True
        return await self._run(_TRANSACTION, self._invoke, atomic, op, *args, **kwargs)

    async def write_statement(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a writing ``op`` that is one statement (see `SyncBind`)."""
        if isinstance(self.target, AsyncEngine) and dialects.statements_commit(self._read_engine):
            return await self._run(_STATEMENT, self._invoke, False, op, *args, **kwargs)
        return await self.write(op, *args, **kwargs)

    async def store(self, opts: ops.Options, rows_of: Callable[[], ops.Rows]) -> None:
        """Serialize and store the rows of a `put` or `put_writes` (see
        `SyncBind.store`)."""
        rows = rows_of()
        if not rows.batches:
            return
        write = self.write_statement if ops.one_round_trip(self.dialect, opts, rows) else self.write
        await write(ops.store, opts, rows)

    async def migrate(self, op: Callable[[Connection], None]) -> None:
        """Await a schema migration ``op(connection)`` (no schema check first)."""
        await self._run(_TRANSACTION, self._migrate, op)

    async def _run(self, mode: Mode, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            if isinstance(self.target, AsyncEngine):
                attempt = 1
                while True:
                    try:
                        if self._kept is not None:
                            # In a greenlet, as `AsyncConnection.run_sync`
                            # runs an operation: the async driver's I/O
                            # under SQLAlchemy's bridge.
                            async with self._writer if mode != _READ else _UNLOCKED:
                                return await greenlet_spawn(self._kept.run, fn, *args, **kwargs)
                        if mode == _READ:
                            async with self._read_engine.connect() as conn:
                                return await conn.run_sync(fn, *args, **kwargs)
                        engine = self._read_engine if mode == _STATEMENT else self.target
                        async with self._writer, _connection(engine) as conn:
                            return await conn.run_sync(fn, *args, **kwargs)
                    except DBAPIError as error:
                        if attempt == ATTEMPTS or not _retryable(error):
                            raise
                    await asyncio.sleep(_backoff(attempt))
                    attempt += 1
            async with self._lock:
                if isinstance(self.target, AsyncConnection):
                    conn = self.target
                else:
                    conn = await self.target.connection()
                return await conn.run_sync(fn, *args, **kwargs)
        except DBAPIError as error:
            if dialects.is_missing_table(error):
                raise _not_ready(error) from error
            raise


class ThreadedBind:
    """The async face of a `SyncBind`: each operation runs whole in a worker
    thread, one hop per operation.

    `AsyncSQLSaver.from_url` uses it for SQLite: aiosqlite runs every driver
    call (cursor, execute, fetch, close, commit) in a thread of its own, so
    an operation on it costs a dozen hops between the loop and that thread,
    where one suffices.
    """

    def __init__(self, sync: SyncBind) -> None:
        self.sync = sync
        self.dialect = sync.dialect

    async def read(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a reading ``op(connection, *args)`` in a transaction."""
        return await asyncio.to_thread(functools.partial(self.sync.read, op, *args, **kwargs))

    async def write(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a writing ``op(connection, *args)`` atomically."""
        return await asyncio.to_thread(functools.partial(self.sync.write, op, *args, **kwargs))

    async def write_statement(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a writing ``op`` that is one statement (see `SyncBind`)."""
        call = functools.partial(self.sync.write_statement, op, *args, **kwargs)
        return await asyncio.to_thread(call)

    async def store(self, opts: ops.Options, rows_of: Callable[[], ops.Rows]) -> None:
        """Serialize and store the rows of a `put` or `put_writes`, both in
        the worker thread (see `SyncBind.store`)."""
        await asyncio.to_thread(self.sync.store, opts, rows_of)

    async def migrate(self, op: Callable[[Connection], None]) -> None:
        """Await a schema migration ``op(connection)``."""
        await asyncio.to_thread(self.sync.migrate, op)

    async def close(self) -> None:
        """Close the connections kept open (`SyncBind.keep_connections`)."""
        self.sync.close()
