"""One test suite, three real databases.

Every backend test runs against SQLite (a file), PostgreSQL and MySQL/MariaDB
through a real driver, sync and async:

=========  ==========================  =========================
backend    sync URL                    async URL
=========  ==========================  =========================
sqlite     sqlite:///<tmp>/test.db     sqlite+aiosqlite:///...
postgres   postgresql+psycopg://...    postgresql+asyncpg://...
mysql      mysql+pymysql://...         mysql+asyncmy://...
=========  ==========================  =========================

Servers come from ``SQLSAVER_TEST_POSTGRES`` / ``SQLSAVER_TEST_MYSQL`` (host
part of a URL, e.g. ``postgres@127.0.0.1:5432/test``), defaulting to the local
servers. Where one is unreachable, a Docker engine (testcontainers) stands
in. Otherwise the backend is skipped, except when ``CI`` or
``SQLSAVER_REQUIRE_ALL_BACKENDS`` is set: then a missing server fails the
run, so CI never passes with a backend silently left out.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from sqlsaver import AsyncSQLSaver, SQLSaver
from sqlsaver.models import Base

POSTGRES = os.environ.get("SQLSAVER_TEST_POSTGRES", "postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("SQLSAVER_TEST_MYSQL", "root@127.0.0.1:3306/test")
REQUIRE_ALL = bool(os.environ.get("CI") or os.environ.get("SQLSAVER_REQUIRE_ALL_BACKENDS"))
# MySQL refuses statements larger than max_allowed_packet (16 MiB by
# default); the large-value tests store 16 MiB values.
MYSQL_MAX_PACKET = 256 * 1024 * 1024


@dataclass(frozen=True)
class Backend:
    """A database under test and its sync and async URLs."""

    name: str
    sync_url: str
    async_url: str


def _reachable(url: str) -> bool:
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host, parsed.port), timeout=2):
            return True
    except OSError:
        return False


def _docker_container(name: str) -> tuple[contextlib.AbstractContextManager, str] | None:
    """A throwaway server from testcontainers, where Docker runs."""
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        return None
    if name == "postgres":
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver=None)
        container.start()
        return container, container.get_connection_url().split("://", 1)[1]
    from testcontainers.mysql import MySqlContainer

    container = MySqlContainer("mariadb:11", username="root", password="test", dbname="test")
    container.start()
    return container, container.get_connection_url().split("://", 1)[1]


@contextlib.contextmanager
def _large_packets(url: str) -> Iterator[None]:
    """On MySQL, GLOBAL max_allowed_packet raised to `MYSQL_MAX_PACKET` for
    the session (connections opened afterwards take it), and put back as it
    was when the session ends: a test changes no server-wide setting for
    good."""
    if make_url(url).get_backend_name() not in ("mysql", "mariadb"):
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        previous = int(conn.execute(text("SELECT @@GLOBAL.max_allowed_packet")).scalar_one())
        conn.execute(text(f"SET GLOBAL max_allowed_packet = {MYSQL_MAX_PACKET}"))
    try:
        yield
    finally:
        with engine.connect() as conn:
            conn.execute(text(f"SET GLOBAL max_allowed_packet = {previous}"))


def _reset(url: str) -> None:
    """Drop sqlsaver's tables (and version table) left by an earlier run."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(text(f"DROP TABLE IF EXISTS {table.name}"))
        conn.execute(text("DROP TABLE IF EXISTS sqlsaver_alembic_version"))
    engine.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgres", "mysql"])
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """Each database, reset and brought to head once per test session."""
    name = request.param
    container = None
    if name == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "test.db"
        found = Backend(name, f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}")
    else:
        where = POSTGRES if name == "postgres" else MYSQL
        sync_scheme, async_scheme = (
            ("postgresql+psycopg", "postgresql+asyncpg")
            if name == "postgres"
            else ("mysql+pymysql", "mysql+asyncmy")
        )
        if not _reachable(f"{sync_scheme}://{where}"):
            started = None if REQUIRE_ALL else _docker_container(name)
            if started is None:
                message = f"{name} is not reachable at {where} (and no Docker engine to start one)"
                if REQUIRE_ALL:
                    pytest.fail(f"{message}; CI requires every backend to run", pytrace=False)
                pytest.skip(message)
            container, where = started
        found = Backend(name, f"{sync_scheme}://{where}", f"{async_scheme}://{where}")
    with _large_packets(found.sync_url):
        _reset(found.sync_url)
        with SQLSaver.from_url(found.sync_url) as saver:
            saver.setup()
        yield found
    if container is not None:
        container.stop()


@pytest.fixture(scope="session")
def sync_saver(backend: Backend) -> Iterator[SQLSaver]:
    """A `SQLSaver` on its own engine, shared by the session's tests."""
    with SQLSaver.from_url(backend.sync_url) as saver:
        yield saver


@pytest.fixture
async def async_saver(backend: Backend) -> AsyncIterator[AsyncSQLSaver]:
    """An `AsyncSQLSaver` on an engine of the test's own event loop."""
    async with AsyncSQLSaver.from_url(backend.async_url) as saver:
        yield saver


@pytest.fixture(params=["sync", "async"])
def aio(request: pytest.FixtureRequest) -> bool:
    """Whether a test drives the async API (`AsyncSQLSaver`, `ainvoke`)."""
    return request.param == "async"


@pytest.fixture
def saver(aio: bool, sync_saver: SQLSaver, async_saver: AsyncSQLSaver) -> SQLSaver | AsyncSQLSaver:
    """The sync or the async saver, as `aio` says."""
    return async_saver if aio else sync_saver


@pytest.fixture
def thread_id() -> str:
    """A thread id no other test uses (tests share their databases)."""
    return f"t-{uuid.uuid4()}"


# Tests that need a server of their own session's: not collected otherwise,
# so the ``tests`` session neither runs nor skips them. A transaction-mode
# pooler in front of PostgreSQL (``nox -s pooler`` sets this), and a Galera
# cluster (``nox -s galera`` names its nodes).
POOLER = bool(os.environ.get("SQLSAVER_TEST_POOLER"))
collect_ignore = [
    *([] if POOLER else ["test_pooler.py"]),
    *([] if os.environ.get("SQLSAVER_TEST_GALERA") else ["cluster"]),
]


def caller_engine_args(url: str) -> dict[str, Any]:
    """What an application's own engine sets through the pooler
    (docs/databases.md, PgBouncer): its driver prepares no named
    statements. Nothing straight to the server."""
    if not POOLER or make_url(url).get_backend_name() != "postgresql":
        return {}
    unnamed = {"asyncpg": {"statement_cache_size": 0}, "psycopg": {"prepare_threshold": None}}
    return {"connect_args": unnamed[make_url(url).get_dialect().driver]}
