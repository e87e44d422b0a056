"""The SQLAlchemy attributes below its public API that sqlsaver relies on.

Each is read where a wrong answer would pass unnoticed: a renamed attribute
would make sqlsaver take an AUTOCOMMIT engine for a transactional one, share
type processors between two dialects, or run statements past a tracer. The
version matrix (``nox -s lowest``, ``nox -s newest``) runs these on the
lowest and the newest SQLAlchemy that pyproject.toml declares.
"""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import Backend
from sqlalchemy import Connection, Engine, String, create_engine, event, literal, select
from sqlalchemy.ext.asyncio import create_async_engine

from sqlsaver.execution import transactions
from sqlsaver.execution.prepared import observed
from sqlsaver.execution.psycopg_raw import native_placeholders
from sqlsaver.execution.sqlalchemy_private import await_, greenlet_spawn


def _engine(backend: Backend, aio: bool, **kwargs: Any) -> Engine:
    """A sync engine, or the one under an AsyncEngine (as `run_sync` sees it)."""
    if aio:
        return create_async_engine(backend.async_url, **kwargs).sync_engine
    return create_engine(backend.sync_url, **kwargs)


def test_an_engines_isolation_level_is_read_off_its_dialect(backend: Backend, aio: bool) -> None:
    # `Dialect._on_connect_isolation_level` (sqlalchemy_private.engine_isolation).
    autocommit = _engine(backend, aio, isolation_level="AUTOCOMMIT")
    default = _engine(backend, aio)
    try:
        assert transactions.autocommit_engine(autocommit)
        assert not transactions.autocommit_engine(default)
        assert transactions.read_options(autocommit.dialect) == {}
    finally:
        autocommit.dispose()
        default.dispose()


def test_psycopg_native_dialect_gets_type_memos_of_its_own() -> None:
    # `Dialect._type_memos` is memoized in the instance's __dict__, which
    # `sqlalchemy_private.dialect_copy` drops from its copy.
    dialect = create_engine("postgresql+psycopg://").dialect
    stmt = select(literal("50%", String()))
    stmt.compile(dialect=dialect)
    assert "_type_memos" in dialect.__dict__
    native = native_placeholders(dialect)
    assert native is not None
    assert native._type_memos is not dialect._type_memos  # type: ignore[attr-defined]
    assert "$1" in str(stmt.compile(dialect=native))


async def test_cursor_listeners_are_seen(backend: Backend, aio: bool) -> None:
    # `Connection._has_events` / `Engine._has_events` (`sqlalchemy_private.has_listeners`),
    # on the sync connections that `run_sync` hands the operations.
    def listener(*args: Any) -> None:
        pass

    def listened_on_connection(conn: Connection) -> bool:
        event.listen(conn, "after_cursor_execute", listener)
        return observed(conn)

    async def seen(check: Any = observed) -> bool:
        if aio:
            async with async_engine.connect() as conn:
                return bool(await conn.run_sync(check))
        with engine.connect() as conn:
            return bool(check(conn))

    async_engine = create_async_engine(backend.async_url)
    engine = async_engine.sync_engine if aio else create_engine(backend.sync_url)
    try:
        assert not await seen()
        assert await seen(listened_on_connection)  # the engine has none
        event.listen(engine, "begin", listener)  # not a cursor listener
        assert not await seen()
        event.listen(engine, "before_cursor_execute", listener)
        assert await seen()
    finally:
        await async_engine.dispose()
        engine.dispose()


async def test_the_greenlet_bridge_awaits_from_sync_code() -> None:
    # `sqlalchemy.util.greenlet_spawn` and `await_` (`await_only` on 2.0),
    # which `AsyncRunner` runs every async operation through.
    async def later() -> str:
        await asyncio.sleep(0)
        return "awaited"

    def sync_code() -> str:
        return await_(later())

    assert await greenlet_spawn(sync_code) == "awaited"
