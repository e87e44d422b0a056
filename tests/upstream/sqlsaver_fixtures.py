"""LangGraph's own graph tests, run on sqlsaver: the two fixtures they take a
checkpointer from, rebound to `SQLSaver` and `AsyncSQLSaver`.

`nox -s langgraph` unpacks the langgraph sdist's ``tests/`` folder and appends
one line to its ``conftest.py``::

    from sqlsaver_fixtures import *

No upstream test is changed. Each test gets a database of its own, at head:

- SQLite: a new file (``sqlite:///`` and ``sqlite+aiosqlite:///``).
- PostgreSQL: a new database, created from a template migrated once per run
  (``postgresql+psycopg``, ``postgresql+asyncpg``).
- MySQL/MariaDB: a new database, its tables copied from a template migrated
  once per run with ``CREATE TABLE ... LIKE`` (``mysql+pymysql``,
  ``mysql+asyncmy``): running the migrations for each of the suite's
  thousands of tests would cost about a second each.

Servers come from ``SQLSAVER_TEST_POSTGRES`` / ``SQLSAVER_TEST_MYSQL`` as in
sqlsaver's own suite; ``SQLSAVER_LANGGRAPH_URLS`` (comma-separated kinds, e.g.
``sqlite,asyncpg``) limits the run to some URL kinds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from sqlsaver import AsyncSQLSaver, SQLSaver

__all__ = ["async_checkpointer", "sync_checkpointer", "sqlsaver_databases"]

POSTGRES = os.environ.get("SQLSAVER_TEST_POSTGRES", "postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("SQLSAVER_TEST_MYSQL", "root@127.0.0.1:3306/test")
# One template per pytest-xdist worker: each migrates its own.
TEMPLATE = f"sqlsaver_lg_template_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"

# URL kind -> (database, SQLAlchemy driver name)
SYNC_KINDS = {
    "sqlite": ("sqlite", "sqlite"),
    "psycopg": ("postgres", "postgresql+psycopg"),
    "pymysql": ("mysql", "mysql+pymysql"),
}
ASYNC_KINDS = {
    "aiosqlite": ("sqlite", "sqlite+aiosqlite"),
    "asyncpg": ("postgres", "postgresql+asyncpg"),
    "asyncmy": ("mysql", "mysql+asyncmy"),
}


def _selected(kinds: dict[str, tuple[str, str]]) -> list[str]:
    wanted = os.environ.get("SQLSAVER_LANGGRAPH_URLS")
    if not wanted:
        return list(kinds)
    chosen = {k.strip() for k in wanted.split(",")}
    return [k for k in kinds if k in chosen]


def _server(database: str) -> str:
    return POSTGRES if database == "postgres" else MYSQL


def _admin_engine(database: str) -> Engine:
    scheme = "postgresql+psycopg" if database == "postgres" else "mysql+pymysql"
    return create_engine(f"{scheme}://{_server(database)}", isolation_level="AUTOCOMMIT")


def _with_database(database: str, driver: str, name: str) -> str:
    where = _server(database).rsplit("/", 1)[0]
    return f"{driver}://{where}/{name}"


class _Databases:
    """Creates a database per test, from a template migrated once."""

    def __init__(self) -> None:
        self._admin: dict[str, Engine] = {}
        self._tables: list[str] = []

    def admin(self, database: str) -> Engine:
        if database not in self._admin:
            engine = self._admin[database] = _admin_engine(database)
            with engine.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
                conn.execute(text(f"CREATE DATABASE {TEMPLATE}"))
            driver = "postgresql+psycopg" if database == "postgres" else "mysql+pymysql"
            with SQLSaver.from_url(_with_database(database, driver, TEMPLATE)) as saver:
                saver.setup()
            if database == "mysql":
                with engine.connect() as conn:
                    self._tables = inspect(conn).get_table_names(schema=TEMPLATE)
        return self._admin[database]

    def create(self, database: str) -> str:
        # Not uuid4: some tests count the uuid4() calls their graph makes.
        name = f"lg_{secrets.token_hex(8)}"
        with self.admin(database).connect() as conn:
            if database == "postgres":
                conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            else:
                conn.execute(text(f"CREATE DATABASE {name}"))
                for table in self._tables:
                    conn.execute(text(f"CREATE TABLE {name}.{table} LIKE {TEMPLATE}.{table}"))
                    conn.execute(
                        text(f"INSERT INTO {name}.{table} SELECT * FROM {TEMPLATE}.{table}")
                    )
        return name

    def drop(self, database: str, name: str) -> None:
        force = " WITH (FORCE)" if database == "postgres" else ""
        with self.admin(database).connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))

    def close(self) -> None:
        for engine in self._admin.values():
            with engine.connect() as conn:
                conn.execute(text(f"DROP DATABASE IF EXISTS {TEMPLATE}"))
            engine.dispose()


@pytest.fixture(scope="session")
def sqlsaver_databases() -> Iterator[_Databases]:
    databases = _Databases()
    yield databases
    databases.close()


@contextlib.contextmanager
def _url(databases: _Databases, database: str, driver: str) -> Iterator[str]:
    """A URL of a database of the test's own, at head; dropped afterwards."""
    if database == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "checkpoints.db")
            with SQLSaver.from_url(f"sqlite:///{path}") as saver:
                saver.setup()
            yield f"{driver}:///{path}"
        return
    name = databases.create(database)
    try:
        yield _with_database(database, driver, name)
    finally:
        databases.drop(database, name)


@pytest.fixture(params=_selected(SYNC_KINDS), ids=lambda kind: f"sqlsaver_{kind}")
def sync_checkpointer(
    request: pytest.FixtureRequest, sqlsaver_databases: _Databases
) -> Iterator[SQLSaver]:
    """`SQLSaver` on a database of the test's own."""
    database, driver = SYNC_KINDS[request.param]
    with _url(sqlsaver_databases, database, driver) as url:
        with SQLSaver.from_url(url) as saver:
            yield saver


@pytest.fixture(params=_selected(ASYNC_KINDS), ids=lambda kind: f"sqlsaver_{kind}")
async def async_checkpointer(
    request: pytest.FixtureRequest, sqlsaver_databases: _Databases
) -> AsyncIterator[AsyncSQLSaver]:
    """`AsyncSQLSaver` on a database of the test's own."""
    database, driver = ASYNC_KINDS[request.param]
    with _url(sqlsaver_databases, database, driver) as url:
        async with AsyncSQLSaver.from_url(url) as saver:
            yield saver
