"""Named prepared statements, the bane of transaction-mode poolers.

- sqlsaver's own PostgreSQL engines (`from_url`) that find a pooler in
  front of the server leave no named prepared statement on it, however
  often a statement runs: through a pooler, another client's statement of
  the same name could be run, or a statement be missing on the next server
  session (`benchmarks/pooler.py`; through a real PgBouncer:
  tests/test_pooler.py). Straight to the server they prepare, as the
  drivers do (half the time of a read: `engines`).
- A prepared-statement error is never reported as missing tables (the
  message holds the SQL, which names sqlsaver's tables), and its message
  names the likely cause and the settings that fix it. Provoked here on the
  direct server, on an engine of the caller's that prepares statements, by
  deallocating them behind the driver's back (what a pooler's next server
  session looks like to the driver).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from sqlsaver import AsyncSQLSaver, SQLSaver, dialects, engines
from sqlsaver.execution.runner import POOLER_HINT

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

CONFIG = {"configurable": {"thread_id": "prepared", "checkpoint_ns": ""}}
RUNS = 12  # psycopg prepares a statement on its fifth run on a connection


def server_statements(conn: Connection) -> int:
    """The named prepared statements of this connection's server session."""
    sql = "SELECT count(*) FROM pg_prepared_statements"
    return int(conn.exec_driver_sql(sql).scalar_one())


@pytest.fixture(params=[False, True], ids=["direct", "pooler"])
def pooler(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether `from_url`'s engines are made to find a pooler in front of
    the server (the real one is tests/test_pooler.py's)."""
    found: bool = request.param
    monkeypatch.setattr(engines, "_behind_pooler", lambda conn, driver: found)
    return found


def test_sync_from_url_prepares_only_without_pooler(backend: Any, pooler: bool) -> None:
    with SQLSaver.from_url(backend.sync_url) as saver:
        for _ in range(RUNS):
            saver.get_tuple(CONFIG)
        # On the connection the saver keeps, which ran those.
        left = saver._runner.read(server_statements)
    assert (left == 0) if pooler else (left > 0)


async def test_async_from_url_prepares_only_without_pooler(backend: Any, pooler: bool) -> None:
    async with AsyncSQLSaver.from_url(backend.async_url) as saver:
        for _ in range(RUNS):
            await saver.aget_tuple(CONFIG)
        left = await saver._runner.read(server_statements)
    assert (left == 0) if pooler else (left > 0)


def test_callers_connect_args_decide(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller's own ``prepare_threshold`` is kept, and nothing is asked."""
    asked: list[bool] = []

    def behind(conn: Any, driver: str) -> bool:
        asked.append(True)
        return True

    monkeypatch.setattr(engines, "_behind_pooler", behind)
    kwargs = {"connect_args": {"prepare_threshold": 1}}
    with SQLSaver.from_url(backend.sync_url, engine_kwargs=kwargs) as saver:
        for _ in range(3):
            saver.get_tuple(CONFIG)
        assert saver._runner.read(server_statements) > 0
    assert not asked


def test_psycopg_statement_gone_is_not_missing_tables(backend: Any) -> None:
    # The caller's engine prepares every statement at once, on one connection.
    engine = create_engine(
        backend.sync_url, pool_size=1, max_overflow=0, connect_args={"prepare_threshold": 0}
    )
    try:
        saver = SQLSaver(engine)
        saver.get_tuple(CONFIG)
        with engine.connect() as conn:
            pgconn = conn.connection.driver_connection.pgconn
            # libpq itself: psycopg keeps its account of what it prepared.
            pgconn.exec_(b"DEALLOCATE ALL")
        with pytest.raises(DBAPIError) as caught:
            saver.get_tuple(CONFIG)
        assert dialects.is_prepared_statement_error(caught.value)
        assert POOLER_HINT in str(caught.value)
        assert "does not exist" in str(caught.value)
    finally:
        engine.dispose()


async def test_asyncpg_statement_gone_is_not_missing_tables(backend: Any) -> None:
    # The caller's engine keeps asyncpg's defaults: named, cached statements.
    engine = create_async_engine(backend.async_url, pool_size=1, max_overflow=0)
    try:
        saver = AsyncSQLSaver(engine)
        await saver.aget_tuple(CONFIG)
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute("DEALLOCATE ALL")
        with pytest.raises(DBAPIError) as caught:
            await saver.aget_tuple(CONFIG)
        assert dialects.is_prepared_statement_error(caught.value)
        assert POOLER_HINT in str(caught.value)
    finally:
        await engine.dispose()


def test_missing_table_is_told_by_its_code(backend: Any) -> None:
    engine = create_engine(backend.sync_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as caught:
            conn.execute(text("SELECT * FROM sqlsaver_no_such_table"))
        assert dialects.is_missing_table(caught.value)
        assert not dialects.is_prepared_statement_error(caught.value)
    finally:
        engine.dispose()
