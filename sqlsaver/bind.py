"""What a saver was given (Engine, Connection or Session; sync or async),
turned into one thing: "run this operation in the right transaction".

- An Engine: each operation is its own transaction, on a pooled connection.
- A Connection or Session: the operation joins the caller's transaction and
  never commits it. Writes run inside a SAVEPOINT, so a failed write leaves
  nothing behind while the caller's transaction goes on. Calls are
  serialized, because LangGraph saves writes from background threads and a
  connection must not be used by two at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sqlsaver import dialects

P = ParamSpec("P")
T = TypeVar("T")

SyncTarget = Engine | Connection | Session
AsyncTarget = AsyncEngine | AsyncConnection | AsyncSession


class SchemaNotReadyError(RuntimeError):
    """sqlsaver's tables are missing from the database."""


def _not_ready(error: DBAPIError) -> SchemaNotReadyError:
    return SchemaNotReadyError(
        "sqlsaver's tables do not exist in this database. Create them once with "
        "`saver.setup()` (`await saver.setup()` for AsyncSQLSaver), or in "
        "deployment with `python -m sqlsaver upgrade --url <database url>`. "
        f"(database said: {error.orig})"
    )


def _in_savepoint(
    conn: Connection, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
) -> T:
    with dialects.atomic_on_caller_connection(conn):
        return op(conn, *args, **kwargs)


class SyncBind:
    """Runs operations on a sync Engine, Connection or Session."""

    def __init__(self, target: SyncTarget) -> None:
        if not isinstance(target, (Engine, Connection, Session)):
            raise TypeError(
                "SQLSaver takes a sqlalchemy Engine, Connection or Session "
                f"(for async ones use AsyncSQLSaver), got {type(target).__name__}"
            )
        self.target = target
        self.dialect = target.get_bind().dialect if isinstance(target, Session) else target.dialect
        self._lock = threading.RLock()
        if isinstance(target, Engine):
            self._write_engine = target.execution_options(**{dialects.WRITE_OPTION: True})

    def read(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a reading ``op(connection, *args)`` in a transaction."""
        return self._run(False, op, *args, **kwargs)

    def write(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run a writing ``op(connection, *args)`` atomically (see module doc)."""
        return self._run(True, op, *args, **kwargs)

    def _run(self, write: bool, op: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            if isinstance(self.target, Engine):
                with (self._write_engine if write else self.target).begin() as conn:
                    return op(conn, *args, **kwargs)
            with self._lock:
                if isinstance(self.target, Connection):
                    conn = self.target
                else:
                    conn = self.target.connection()
                if write:
                    return _in_savepoint(conn, op, *args, **kwargs)
                return op(conn, *args, **kwargs)
        except DBAPIError as error:
            if dialects.is_missing_table(error):
                raise _not_ready(error) from error
            raise


class AsyncBind:
    """Runs the same operations on an AsyncEngine, AsyncConnection or
    AsyncSession, through `run_sync` (no threads: the async driver does the
    I/O under SQLAlchemy's greenlet bridge)."""

    def __init__(self, target: AsyncTarget) -> None:
        if not isinstance(target, (AsyncEngine, AsyncConnection, AsyncSession)):
            raise TypeError(
                "AsyncSQLSaver takes a sqlalchemy AsyncEngine, AsyncConnection or "
                f"AsyncSession (for sync ones use SQLSaver), got {type(target).__name__}"
            )
        self.target = target
        bind = target.bind if isinstance(target, AsyncSession) else target
        if bind is None:
            raise TypeError("AsyncSQLSaver needs an AsyncSession bound to an AsyncEngine")
        self.dialect = bind.dialect
        self._lock = asyncio.Lock()
        if isinstance(target, AsyncEngine):
            self._write_engine = target.execution_options(**{dialects.WRITE_OPTION: True})

    async def read(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a reading ``op(connection, *args)`` in a transaction."""
        return await self._run(False, op, *args, **kwargs)

    async def write(
        self, op: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await a writing ``op(connection, *args)`` atomically (see module doc)."""
        return await self._run(True, op, *args, **kwargs)

    async def _run(self, write: bool, op: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            if isinstance(self.target, AsyncEngine):
                async with (self._write_engine if write else self.target).begin() as conn:
                    return await conn.run_sync(op, *args, **kwargs)
            async with self._lock:
                if isinstance(self.target, AsyncConnection):
                    conn = self.target
                else:
                    conn = await self.target.connection()
                if write:
                    return await conn.run_sync(_in_savepoint, op, *args, **kwargs)
                return await conn.run_sync(op, *args, **kwargs)
        except DBAPIError as error:
            if dialects.is_missing_table(error):
                raise _not_ready(error) from error
            raise
