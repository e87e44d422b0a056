"""Connections of a saver's own engine, kept open between operations.

A checkout from SQLAlchemy's pool and back costs ~80k instructions of
Python (~20 us): a third of reading a checkpoint on SQLite, a fifth of a
write on PostgreSQL. `KeptConnections` skips it for the engines sqlsaver
makes itself (`keeps_connections`), and makes up for what the pool does at
a checkout (see the class).
"""

from __future__ import annotations

import os
import threading
import time
from types import TracebackType

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from sqlsaver.execution.transactions import KNOWS_TRANSACTIONS, autocommit_engine, in_transaction


def keeps_connections(engine: Engine, pre_ping: bool) -> bool:
    """Whether a saver keeps connections of its own engine open between
    operations (`KeptConnections`): a checkout from SQLAlchemy's pool
    and back costs ~80k instructions of Python (~20 us), a third of reading
    a checkpoint on SQLite and a fifth of a write on PostgreSQL.

    Only on an AUTOCOMMIT engine (as sqlsaver's are), whose idle connections
    hold no transaction; on a driver that tells whether one does
    (`in_transaction`); with a pool of connections apart (a `QueuePool`:
    ``NullPool`` asks for none kept, and an in-memory SQLite database's
    ``StaticPool`` shares its one connection among threads); and not where
    the caller asked for a ping at each checkout (``pool_pre_ping``), which
    a kept connection would skip."""
    pooled = isinstance(engine.pool, QueuePool)
    known = engine.dialect.driver in KNOWS_TRANSACTIONS
    return known and autocommit_engine(engine) and pooled and not pre_ping


class KeptConnections:
    """Connections of an engine kept open between operations, at most
    `KEPT` of them, each used by one operation at a time (`take`, then
    `give_back`, or `failed`).

    For sqlsaver's own engines (`keeps_connections`): a checkout
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

    def lease(self) -> Lease:
        """A kept connection for one operation: ``with kept.lease() as conn``
        gives it back, or after an error hands it to `failed`."""
        return Lease(self)

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
        return not conn.invalidated and not in_transaction(conn)
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


class Lease:
    """One operation's use of a kept connection (`KeptConnections.lease`):
    a class, not a generator, as it runs around every operation."""

    __slots__ = ("_kept", "_conn", "_leased")

    def __init__(self, kept: KeptConnections) -> None:
        self._kept = kept

    def __enter__(self) -> Connection:
        self._conn, self._leased = self._kept.take()
        return self._conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is None:
            self._kept.give_back(self._conn, self._leased)
        else:
            self._kept.failed(self._conn, error)
