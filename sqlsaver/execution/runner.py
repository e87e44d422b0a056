"""One runner for every operation: on an Engine, a Connection or a Session,
sync or async.

An operation is a function ``op(connection, *args)`` of `sqlsaver.ops`.
`Runner.run` gives it a connection in the right transaction:

- **On an Engine** each operation runs on a connection of its own: a
  read with no transaction where the database allows
  (`transactions.read_options`), a write that is atomic on its own with
  none either (`plan.Plan.alone`), any other write in a transaction
  (`transactions.atomic`). On sqlsaver's own engines (`from_url`) the
  connection is one kept open between operations (`kept`). A transaction
  the database aborts as a deadlock victim, or whose connection is found
  dead, runs again (`ATTEMPTS`, `CONFLICT_ATTEMPTS`): every operation is
  idempotent. On
  SQLite, writes queue on a lock of the saver before they take the
  database's: SQLite has one writer, and its busy timeout sleeps in steps
  of milliseconds where a lock hands over at once.
- **On a caller's Connection or Session** the operation joins the caller's
  transaction and never commits it: a write runs inside a SAVEPOINT, so a
  failed write leaves nothing behind while the caller's transaction goes
  on. Calls are serialized (LangGraph saves writes from background
  threads; a connection serves one at a time), and never retried.

The first operation checks, once, that sqlsaver's tables are at the
revision this sqlsaver needs (`migrate.require_current`).

A saver with a ``schema`` runs every operation on a connection that places
sqlsaver's tables there (`schemas`): an engine of its own sharing the
given one's pool, or the caller's connection with the option set for the
length of the operation.

**Async** is the same code: `AsyncRunner` runs `Runner.run` in a greenlet
(SQLAlchemy's bridge, as `AsyncConnection.run_sync` does), on the sync
Engine, Connection or Session under the async one, where the async driver
does the I/O; its locks and sleeps are the event loop's. For aiosqlite,
which is a thread around sqlite3, `AsyncSQLSaver.from_url` runs a sync
runner in a worker thread instead: one hop per operation, where aiosqlite
takes a dozen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, cast

from sqlalchemy import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, UnboundExecutionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sqlsaver import dialects, migrate, schemas
from sqlsaver.execution import transactions
from sqlsaver.execution.kept import KeptConnections, keeps_connections
from sqlsaver.execution.plan import Sized, plan
from sqlsaver.execution.psycopg_raw import connection_lost
from sqlsaver.execution.sqlalchemy_private import await_, greenlet_spawn
from sqlsaver.migrate import SchemaNotReadyError
from sqlsaver.policies import Policies

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=Sized)

SyncTarget = Engine | Connection | Session
AsyncTarget = AsyncEngine | AsyncConnection | AsyncSession
Op = Callable[Concatenate[Connection, P], T]

# "read": no transaction where the database allows; "alone": a write that
# is atomic on its own (`Plan.alone`); "transaction": any other write;
# "migrate": a schema migration (DDL, in a transaction where the database
# has them; no schema check first).
Mode = Literal["read", "alone", "transaction", "migrate"]

# Attempts of a transaction of the saver's own, in all (see the module's doc).
ATTEMPTS = 4
# Attempts in all when each failed as a deadlock victim (or, on a Galera
# cluster, a certification conflict, which MariaDB reports as a deadlock):
# the rows are there to be written, it only takes a turn without a rival.
# On a 3-node Galera cluster with three writers on one thread's TTL row,
# one operation failed up to 5 attempts in a row (tests/cluster); 10, with
# the backoff capped, waits at most ~2 s in all.
CONFLICT_ATTEMPTS = 10
_MAX_BACKOFF = 0.32  # seconds

# Each attempt that runs again is logged here at DEBUG: how often a saver
# retries (deadlocks; on Galera, certification conflicts) is worth watching.
log = logging.getLogger(__name__)


def _retryable(error: DBAPIError) -> bool:
    # A dropped connection (the pool discards it; there is no pre-ping round
    # trip per checkout) or a deadlock victim: run the transaction again.
    # (A lost psycopg connection that SQLAlchemy's own statements did not
    # invalidate is discarded when it is given back: its state is not idle.)
    return (
        error.connection_invalidated or dialects.is_retryable(error) or connection_lost(error.orig)
    )


def _invalidate_if_lost(conn: Connection, error: DBAPIError) -> None:
    """Invalidate a caller's connection lost where SQLAlchemy did not see it
    (`connection_lost`: a SAVEPOINT or COMMIT SQLAlchemy sent itself), so
    that the caller's rollback and next transaction work, as after any
    disconnect; otherwise its rollback would fail the same way."""
    if not conn.invalidated and connection_lost(error.orig):
        conn.invalidate(error.orig)
        error.connection_invalidated = True


def _backoff(attempt: int) -> float:
    """Seconds to wait before another attempt: short, jittered, growing."""
    return random.uniform(0, min(0.01 * 2**attempt, _MAX_BACKOFF))


def _not_ready(error: DBAPIError, url: URL | None, schema: str | None) -> SchemaNotReadyError:
    command = migrate.upgrade_command(url, schema)
    return SchemaNotReadyError(
        f"sqlsaver's tables{schemas.described(schema)} do not exist in this database. Create "
        "them once with `saver.setup()` (`await saver.setup()` for AsyncSQLSaver), or in "
        f"deployment with: {command}. (database said: {error.orig})"
    )


# Said first in a prepared-statement error's message (it keeps its type).
# sqlsaver's own engines prepare no named statements where they find a
# pooler (`engines._watch_for_pooler`), so it comes from an engine of the
# caller's, or a pooler that passes the server's cancel key on.
POOLER_HINT = (
    "a prepared statement was missing or taken on the database session: this happens "
    "behind a connection pooler in transaction mode (such as PgBouncer), where a "
    "client's statements run on whichever server session is free. Let the driver "
    "prepare no named statements: connect_args={'prepare_threshold': None} for psycopg, "
    "{'statement_cache_size': 0} for asyncpg (SQLSaver.from_url and AsyncSQLSaver.from_url "
    "set them when they find a pooler), or use PgBouncer 1.21+ with "
    "max_prepared_statements. See sqlsaver's docs/databases.md, PgBouncer."
)


class _AwaitedLock:
    """An `asyncio.Lock` taken from inside the greenlet bridge."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    def __enter__(self) -> None:
        await_(self._lock.acquire())

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Waits:
    """How a runner waits: for a lock, and between attempts. On threads for
    a sync saver; on the event loop for an async one, whose runner runs in
    a greenlet that must not block the loop."""

    def __init__(self, on_loop: bool) -> None:
        self.on_loop = on_loop

    def lock(self) -> contextlib.AbstractContextManager[Any]:
        """A lock to serialize the saver's own calls or writes."""
        return _AwaitedLock() if self.on_loop else threading.RLock()

    def sleep(self, seconds: float) -> None:
        if self.on_loop:
            await_(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)


_UNLOCKED = contextlib.nullcontext()


class Runner:
    """Runs operations on what a saver was given (see the module's doc).

    ``target`` is the sync object: for an async saver, the one under its
    AsyncEngine, AsyncConnection or AsyncSession (`AsyncRunner.of`).
    """

    def __init__(
        self,
        target: SyncTarget | Callable[[], Connection],
        dialect: Any,
        check_schema: bool = True,
        waits: Waits | None = None,
        schema: str | None = None,
    ) -> None:
        schemas.check_backend(schema, dialect.name)
        self.dialect = dialect
        # Where sqlsaver's tables are: set on each connection an operation
        # runs on, where everything reads it from (`schemas`).
        self.schema = schema
        # Apps whose own migrations manage sqlsaver's tables opt out.
        self.schema_checked = not check_schema
        self._waits = waits = waits or Waits(on_loop=False)
        self._kept: KeptConnections | None = None
        self.engine: Engine | None = (
            schemas.engine_in(target, schema) if isinstance(target, Engine) else None
        )
        # The database's URL as the saver was given it, for the commands
        # that errors suggest (see `AsyncSQLSaver.from_url` on aiosqlite).
        self.url: URL | None = self.engine.url if self.engine is not None else None
        self._writer: contextlib.AbstractContextManager[Any] = _UNLOCKED
        self._alone_engine: Engine | None = None
        if self.engine is not None:
            options = transactions.read_options(dialect)
            self._read_engine = self.engine.execution_options(**options)
            # A write that is one statement may run on the read engine, with
            # no transaction around it (`transactions.statements_commit`).
            self._alone_engine = (
                self._read_engine if transactions.statements_commit(self._read_engine) else None
            )
            if dialects.single_writer(dialect):
                self._writer = waits.lock()
        else:
            self._caller: Callable[[], Connection]
            if isinstance(target, Connection):
                self._caller = functools.partial(_same, target)
            elif isinstance(target, Session):
                self._caller = target.connection
            else:
                self._caller = cast(Callable[[], Connection], target)
            self._lock = waits.lock()

    def keep_connections(self, pre_ping: bool = False) -> None:
        """Keep the engine's connections open between operations, where that
        pays (`kept.keeps_connections`): for an engine of the saver's own
        (``pre_ping``: created with ``pool_pre_ping``), released by `close`."""
        if self.engine is not None and keeps_connections(self.engine, pre_ping):
            self._kept = KeptConnections(self.engine)

    def close(self) -> None:
        """Close the connections kept open (`keep_connections`)."""
        if self._kept is not None:
            self._kept.close()

    def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a reading ``op(connection, *args)``."""
        return self.run("read", op, *args, **kwargs)

    def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a writing ``op(connection, *args)`` atomically."""
        return self.run("transaction", op, *args, **kwargs)

    def store(
        self, policies: Policies, rows_of: Callable[[], R], op: Callable[..., None], *args: Any
    ) -> None:
        """Make the rows of a write (``rows_of()``: serializing them, before a
        connection is taken, or on SQLite the writer's lock), and store them
        by ``op(connection, plan, rows, *args)`` as `plan.plan` says (in a
        transaction unless `Plan.alone`)."""
        rows = rows_of()
        if not rows.count:
            return
        how = plan(self.dialect, policies, rows)
        self.run("alone" if how.alone else "transaction", op, how, rows, *args)

    def migrate(self, op: Callable[[Connection], None]) -> None:
        """Run a schema migration ``op(connection)`` (no schema check first)."""
        self.run("migrate", op)

    def run(self, mode: Mode, op: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``op(connection, *args, **kwargs)``, run as ``mode`` says."""
        try:
            if self.engine is None:
                with self._lock:
                    conn = self._caller()
                    try:
                        with schemas.on_connection(conn, self.schema):
                            return self._invoke(conn, mode, op, args, kwargs)
                    except DBAPIError as error:
                        _invalidate_if_lost(conn, error)
                        raise
            attempt = 1
            while True:
                try:
                    # A writer queues on the lock before it takes a
                    # connection, as before a checkout from the pool.
                    with self._writer if mode != "read" else _UNLOCKED:
                        with self._connection(mode) as conn:
                            return self._invoke(conn, mode, op, args, kwargs)
                except DBAPIError as error:
                    if not _retryable(error):
                        raise
                    limit = CONFLICT_ATTEMPTS if dialects.is_retryable(error) else ATTEMPTS
                    if attempt >= limit:
                        raise
                    name = getattr(op, "__name__", op)
                    log.debug("%s: attempt %d of %d: %s", name, attempt, limit, error.orig)
                self._waits.sleep(_backoff(attempt))
                attempt += 1
        except DBAPIError as error:
            if dialects.is_missing_table(error):
                raise _not_ready(error, self.url, self.schema) from error
            if dialects.is_prepared_statement_error(error):
                error.add_detail(POOLER_HINT)
            raise

    def _connection(self, mode: Mode) -> contextlib.AbstractContextManager[Connection]:
        """A connection of the engine for one operation."""
        if self._kept is not None:
            return self._kept.lease()
        if mode == "read":
            return self._read_engine.connect()
        assert self.engine is not None
        engine = self._alone_engine if mode == "alone" and self._alone_engine else self.engine
        # On an AUTOCOMMIT engine (as sqlsaver's are) a plain connection: the
        # operation begins any transaction it needs (`transactions.atomic`),
        # and `begin()` would only add bookkeeping (a COMMIT round trip on
        # MySQL). Otherwise `begin()`, which commits the transaction the
        # driver opens itself (pysqlite's, before an INSERT).
        if transactions.autocommit_engine(engine):
            return engine.connect()
        return engine.begin()

    def _invoke(
        self, conn: Connection, mode: Mode, op: Callable[..., T], args: Any, kwargs: Any
    ) -> T:
        if mode == "migrate":
            with transactions.own_transaction(conn):
                result = op(conn, *args, **kwargs)
            self.schema_checked = True
            return result
        if not self.schema_checked:
            migrate.require_current(conn, self.url)
            self.schema_checked = True
        if mode == "read" or (mode == "alone" and self._alone_engine is not None):
            return op(conn, *args, **kwargs)
        # A write: in a caller's transaction, or where the connection would
        # commit each statement on its own, atomic (a SAVEPOINT, or a
        # transaction of the saver's own); else in the one `begin()` opened.
        if self.engine is None or transactions.autocommit(conn):
            with transactions.atomic(conn):
                return op(conn, *args, **kwargs)
        return op(conn, *args, **kwargs)


class AsyncRunner:
    """The async face of a `Runner`: each operation one hop off the event
    loop, into a greenlet (`greenlet_spawn`, the async drivers' bridge) or,
    for a runner on a thread-based driver, a worker thread."""

    def __init__(self, runner: Runner, in_thread: bool = False) -> None:
        self.runner = runner
        self.dialect = runner.dialect
        self._hop: Callable[..., Any] = asyncio.to_thread if in_thread else greenlet_spawn

    @classmethod
    def of(
        cls, target: AsyncTarget, check_schema: bool = True, schema: str | None = None
    ) -> AsyncRunner:
        """The runner of an AsyncEngine, AsyncConnection or AsyncSession."""
        if not isinstance(target, (AsyncEngine, AsyncConnection, AsyncSession)):
            raise TypeError(
                "AsyncSQLSaver takes a sqlalchemy AsyncEngine, AsyncConnection or "
                f"AsyncSession (for sync ones use SQLSaver), got {type(target).__name__}"
            )
        waits = Waits(on_loop=True)
        if isinstance(target, AsyncEngine):
            return cls(Runner(target.sync_engine, target.dialect, check_schema, waits, schema))
        if isinstance(target, AsyncConnection):
            started = functools.partial(_started, target)
            return cls(Runner(started, target.dialect, check_schema, waits, schema))
        # `get_bind()`, not `.bind`: SQLAlchemy 2.0 sets that attribute only
        # on a session given a bind, 2.1 always.
        try:
            dialect = target.get_bind().dialect
        except UnboundExecutionError:
            raise TypeError(
                "AsyncSQLSaver needs an AsyncSession bound to an AsyncEngine (AsyncSession(engine))"
            ) from None
        return cls(Runner(target.sync_session.connection, dialect, check_schema, waits, schema))

    def keep_connections(self, pre_ping: bool = False) -> None:
        """See `Runner.keep_connections`."""
        self.runner.keep_connections(pre_ping)

    async def close(self) -> None:
        """Close the connections kept open (`Runner.keep_connections`)."""
        await self._off_loop(self.runner.close)

    async def read(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await a reading ``op(connection, *args)``."""
        return await self._off_loop(functools.partial(self.runner.read, op, *args, **kwargs))

    async def write(self, op: Op[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await a writing ``op(connection, *args)``, atomically."""
        return await self._off_loop(functools.partial(self.runner.write, op, *args, **kwargs))

    async def store(
        self, policies: Policies, rows_of: Callable[[], R], op: Callable[..., None], *args: Any
    ) -> None:
        """See `Runner.store` (``rows_of`` runs where the runner runs)."""
        await self._off_loop(functools.partial(self.runner.store, policies, rows_of, op, *args))

    async def migrate(self, op: Callable[[Connection], None]) -> None:
        """Await a schema migration ``op(connection)``."""
        await self._off_loop(functools.partial(self.runner.migrate, op))

    async def _off_loop(self, call: Callable[[], T]) -> T:
        return cast(T, await self._hop(call))


def _same(conn: Connection) -> Connection:
    return conn


def _started(conn: AsyncConnection) -> Connection:
    """The sync Connection under a caller's AsyncConnection."""
    if conn.sync_connection is None:
        raise TypeError(
            "AsyncSQLSaver needs a started AsyncConnection: "
            "`async with engine.connect() as conn: AsyncSQLSaver(conn)`"
        )
    return conn.sync_connection


def sync_runner(target: SyncTarget, check_schema: bool = True, schema: str | None = None) -> Runner:
    """The runner of a sync Engine, Connection or Session."""
    if not isinstance(target, (Engine, Connection, Session)):
        raise TypeError(
            "SQLSaver takes a sqlalchemy Engine, Connection or Session "
            f"(for async ones use AsyncSQLSaver), got {type(target).__name__}"
        )
    dialect = target.get_bind().dialect if isinstance(target, Session) else target.dialect
    return Runner(target, dialect, check_schema, schema=schema)
