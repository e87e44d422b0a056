"""Faults inside a write: the database's error (or a documented sqlsaver
error), never an internal one; nothing partial stored; the saver usable
afterwards. Real faults only: a value larger than MySQL's
``max_allowed_packet``, and the saver's connection ended by the server
(``pg_terminate_backend``, MariaDB's ``KILL``) between two statements of a
write; on SQLite, which has no server, its connection closed under it there.

Each runs on the saver kinds a write takes different paths on: a `from_url`
saver (kept AUTOCOMMIT connections, its own transaction begun on the
driver's cursor), and savers on a caller's Engine, Connection and Session
(the caller's transaction is the caller's: a failed write never commits or
ends it itself).
"""

from __future__ import annotations

import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiosqlite
import pytest
from helpers import SESSION_ID, call
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import Connection, Engine, create_engine, event, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from sqlsaver import AsyncSQLSaver, SQLSaver, ValueTooLargeError
from sqlsaver.execution.sqlalchemy_private import await_
from sqlsaver.models import blobs, checkpoints, writes

TARGETS = ["from_url", "engine", "connection", "session"]
# MariaDB's default max_allowed_packet (the suite raises it: conftest).
DEFAULT_MAX_PACKET = 16 * 1024 * 1024


@dataclass
class Target:
    """A saver on one kind of target; the caller's Connection or Session
    (sync or async) whose transaction it joins, if any."""

    kind: str
    aio: bool
    saver: Any
    caller: Any = None
    engine: Engine | None = None  # the caller's Engine (sync), if any

    async def _do(self, result: Any) -> Any:
        return await result if inspect.isawaitable(result) else result

    async def commit(self) -> None:
        if self.caller is not None:
            await self._do(self.caller.commit())

    async def rollback(self) -> None:
        if self.caller is not None:
            await self._do(self.caller.rollback())

    async def begin(self) -> None:
        """A new transaction of the caller's (a Session begins its own)."""
        if self.kind == "connection":
            await self._do(self.caller.begin())


@asynccontextmanager
async def saver_on(
    kind: str,
    aio: bool,
    backend: Any,
    connect_args: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[Target]:
    """A saver (with ``options``) on ``kind``: its own engine (`from_url`),
    or a caller's Engine, Connection or Session (these two in a transaction
    the caller commits or rolls back: `Target.commit`); ``connect_args``
    for the driver's connections."""
    url = backend.async_url if aio else backend.sync_url
    connect_args = connect_args or {}
    if kind == "from_url":
        kwargs = {"engine_kwargs": {"connect_args": connect_args}, **options}
        if aio:
            async with AsyncSQLSaver.from_url(url, **kwargs) as saver:
                yield Target(kind, aio, saver)
        else:
            with SQLSaver.from_url(url, **kwargs) as saver:
                yield Target(kind, aio, saver)
        return
    if aio:
        aengine = create_async_engine(url, connect_args=connect_args)
        try:
            if kind == "engine":
                saver = AsyncSQLSaver(aengine, **options)
                yield Target(kind, aio, saver, None, aengine.sync_engine)
            elif kind == "connection":
                async with aengine.connect() as aconn:
                    await aconn.begin()
                    yield Target(kind, aio, AsyncSQLSaver(aconn, **options), aconn)
            else:
                async with AsyncSession(aengine) as asession:
                    yield Target(kind, aio, AsyncSQLSaver(asession, **options), asession)
        finally:
            await aengine.dispose()
        return
    engine = create_engine(url, connect_args=connect_args)
    try:
        if kind == "engine":
            yield Target(kind, aio, SQLSaver(engine, **options), None, engine)
        elif kind == "connection":
            with engine.connect() as conn:
                conn.begin()
                yield Target(kind, aio, SQLSaver(conn, **options), conn)
        else:
            with Session(engine) as session:
                yield Target(kind, aio, SQLSaver(session, **options), session)
    finally:
        engine.dispose()


def config_of(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


async def put(saver: Any, aio: bool, thread_id: str, **values: Any) -> None:
    """A checkpoint of ``values``, one blob row per channel (lists)."""
    checkpoint = empty_checkpoint()
    version = f"{1:032}.{uuid.uuid4().hex[:16]}"
    checkpoint["channel_values"] = {name: [value] for name, value in values.items()}
    checkpoint["channel_versions"] = dict.fromkeys(values, version)
    new_versions = dict(checkpoint["channel_versions"])
    await call(aio, saver, "put", config_of(thread_id), checkpoint, {}, new_versions)


async def put_writes(saver: Any, aio: bool, thread_id: str, **values: Any) -> None:
    """A task's writes: one to a special channel (replaced on a repeat) and
    the others (kept): two inserts."""
    config = {"configurable": {**config_of(thread_id)["configurable"], "checkpoint_id": "c1"}}
    writes_ = [("__error__", "failed"), *values.items()]
    await call(aio, saver, "put_writes", config, writes_, "task-1")


WRITE = {"put": put, "put_writes": put_writes}


def stored(db: Engine, thread_id: str) -> dict[str, int]:
    """Committed rows of ``thread_id``, seen from a connection of its own."""
    with db.connect() as conn:
        return {
            table.name.removeprefix("sqlsaver_"): conn.scalar(
                select(func.count()).select_from(table).where(table.c.thread_id == thread_id)
            )
            for table in (checkpoints, blobs, writes)
        }


NOTHING = {"checkpoints": 0, "blobs": 0, "writes": 0}
# What each write stores whole (two channels).
WHOLE = {
    "put": {"checkpoints": 1, "blobs": 2, "writes": 0},
    "put_writes": {"checkpoints": 0, "blobs": 0, "writes": 3},
}


@pytest.fixture
def db(backend: Any) -> Iterator[Engine]:
    """An engine of the test's own, to look at what was committed."""
    engine = create_engine(backend.sync_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


async def still_works(target: Target, aio: bool, db: Engine, thread_id: str) -> None:
    """The same saver stores and reads a checkpoint after the failure."""
    await put(target.saver, aio, thread_id, a="after")
    found = await call(aio, target.saver, "get_tuple", config_of(thread_id))
    assert found.checkpoint["channel_values"] == {"a": ["after"]}
    await target.commit()
    assert stored(db, thread_id) == {"checkpoints": 1, "blobs": 1, "writes": 0}


# -- a value larger than MySQL's max_allowed_packet ----------------------------


@pytest.fixture
def default_max_packet(db: Engine) -> Iterator[None]:
    """MySQL's GLOBAL max_allowed_packet at its default for the test (the
    suite raises it), and put back as it was when the test ends. Connections
    opened meanwhile take it for their lifetime."""
    with db.connect() as conn:
        previous = int(conn.exec_driver_sql("SELECT @@GLOBAL.max_allowed_packet").scalar_one())
        conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {DEFAULT_MAX_PACKET}")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {previous}")


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
@pytest.mark.parametrize("write", ["put", "put_writes"])
@pytest.mark.parametrize("kind", TARGETS)
async def test_value_over_max_allowed_packet(
    backend: Any,
    aio: bool,
    kind: str,
    write: str,
    db: Engine,
    thread_id: str,
    default_max_packet: None,
) -> None:
    """A 24 MiB value where the server takes statements of 16 MiB: a
    `ValueTooLargeError` naming the limit and how to raise it, every time
    (not a dropped connection's error, nor a KeyError of sqlsaver's
    bookkeeping after one); nothing of it stored; the caller's transaction
    goes on (what it wrote before is kept); the saver works afterwards."""
    huge = "x" * (24 * 1024 * 1024)
    async with saver_on(kind, aio, backend) as target:
        await put(target.saver, aio, thread_id + "-before", a="before")
        for _ in range(2):
            with pytest.raises(ValueTooLargeError) as raised:
                await WRITE[write](target.saver, aio, thread_id, a=huge, b="small")
            message = str(raised.value)
            assert f"max_allowed_packet of {DEFAULT_MAX_PACKET} bytes" in message
            assert advised_packet(message) > len(huge)
            assert isinstance(raised.value, ValueError)
        await still_works(target, aio, db, thread_id + "-after")
    assert stored(db, thread_id) == NOTHING
    assert stored(db, thread_id + "-before") == {"checkpoints": 1, "blobs": 1, "writes": 0}


def advised_packet(message: str) -> int:
    """The max_allowed_packet a `ValueTooLargeError` advises."""
    found = re.search(r"SET GLOBAL max_allowed_packet = (\d+)", message)
    assert found, message
    return int(found.group(1))


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
async def test_max_allowed_packet_counted_as_the_driver_writes(
    backend: Any, aio: bool, db: Engine, thread_id: str, default_max_packet: None
) -> None:
    """A 10 MiB value where the server takes statements of 16 MiB. PyMySQL
    (from 1.2) writes binary values in hex, two bytes a byte: refused
    before it is sent, and the limit the error advises takes it. asyncmy
    escapes them, a byte a byte: stored as it is."""
    value = "x" * (10 * 1024 * 1024)
    async with saver_on("from_url", aio, backend) as target:
        if aio:  # asyncmy
            await put(target.saver, aio, thread_id, a=value)
            assert stored(db, thread_id) == {"checkpoints": 1, "blobs": 1, "writes": 0}
            return
        with pytest.raises(ValueTooLargeError) as raised:
            await put(target.saver, aio, thread_id, a=value)
    assert stored(db, thread_id) == NOTHING
    with db.connect() as conn:
        conn.exec_driver_sql(f"SET GLOBAL max_allowed_packet = {advised_packet(str(raised.value))}")
    async with saver_on("from_url", aio, backend) as target:  # new connections
        await put(target.saver, aio, thread_id, a=value)
    assert stored(db, thread_id) == {"checkpoints": 1, "blobs": 1, "writes": 0}


# -- the connection ended between two statements of a write --------------------

# How to end a connection (`helpers.SESSION_ID`) from another, and to see
# it gone. (pg_terminate_backend's own wait polls every 100 ms: `kill` polls.)
KILL = {"postgres": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}
GONE = {
    "postgres": "SELECT count(*) FROM pg_stat_activity WHERE pid = {}",
    "mysql": "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = {}",
}


def kill(backend: str, db: Engine, dbapi_conn: Any) -> None:
    """End a driver connection for real: the server kills it from another
    connection (`test_faults.Killer`); SQLite's is closed under its user."""
    driver_conn = getattr(dbapi_conn, "driver_connection", dbapi_conn)
    if backend == "sqlite":
        if isinstance(driver_conn, aiosqlite.Connection):
            # sqlite3's connection closed in aiosqlite's thread, under it: as a
            # server's kill, unknown to the client until it next uses it
            # (SQLAlchemy's adapter skips a COMMIT once aiosqlite is closed).
            await_(driver_conn._execute(close_sqlite, driver_conn._conn))
        else:
            close_sqlite(driver_conn)
        return
    driver = type(driver_conn).__module__.split(".")[0]
    victim = int(SESSION_ID[driver](driver_conn))
    with db.connect() as other:
        other.exec_driver_sql(KILL[backend].format(victim))
        deadline = time.monotonic() + 5
        while other.exec_driver_sql(GONE[backend].format(victim)).scalar():
            assert time.monotonic() < deadline, "the killed connection lingers"
            time.sleep(0.002)


def close_sqlite(raw: Any) -> None:
    """Close a sqlite3 connection, its transaction rolled back first, as a
    server's kill does: closed with a statement still open (a cursor's,
    killed after it ran), sqlite3 would keep it, and its lock, open until
    that cursor is collected."""
    if raw.in_transaction:
        raw.execute("ROLLBACK")
    raw.close()


class Killer:
    """Counts the statements run on the saver's engines and, when armed,
    ends the connection before statement ``at``: the server kills it from
    another connection (SQLite: the connection is closed under the saver)."""

    def __init__(self, backend: Any, db: Engine) -> None:
        self.backend, self.db = backend, db
        self.seen = 0
        self.at = 0  # 0: never

    def __call__(self, conn: Connection, *_: Any) -> None:
        if conn.engine is self.db:
            return
        self.seen += 1
        if self.seen == self.at:
            self.kill(conn)

    def kill(self, conn: Connection) -> None:
        kill(self.backend.name, self.db, conn.connection.dbapi_connection)


@pytest.fixture
def killer(backend: Any, db: Engine) -> Iterator[Killer]:
    kill = Killer(backend, db)
    event.listen(Engine, "before_cursor_execute", kill)
    try:
        yield kill
    finally:
        event.remove(Engine, "before_cursor_execute", kill)


@pytest.mark.parametrize("write", ["put", "put_writes"])
@pytest.mark.parametrize("kind", TARGETS)
async def test_connection_ended_between_statements(
    backend: Any, aio: bool, kind: str, write: str, db: Engine, killer: Killer, thread_id: str
) -> None:
    """A write whose connection the server ends before its 1st, 2nd, ...
    statement (BEGIN, the inserts, COMMIT; a value over 1 MB makes it a
    transaction of several on every database): the database's error (a
    saver of its own engine may run it again on a fresh connection and
    succeed), never an internal one (the KeyError or "Can't reconnect until
    invalid transaction is rolled back" of sqlsaver's own transaction); the
    write stored whole or not at all; the saver works afterwards."""
    large = "y" * 1_100_000
    async with saver_on(kind, aio, backend) as target:
        await put(target.saver, aio, thread_id + "-warm", a="warm")  # the schema check
        await target.commit()
        at = 0
        while True:  # until a write runs to its end with no kill
            at += 1
            victim = f"{thread_id}-{at}"
            killer.seen, killer.at = 0, at
            try:
                await WRITE[write](target.saver, aio, victim, a=large, b="small")
                await target.commit()
            except DBAPIError as error:  # the database's, not sqlsaver's
                assert error.connection_invalidated, error
                await target.rollback()
            killer.at = 0
            assert stored(db, victim) in (NOTHING, WHOLE[write]), at
            if killer.seen < at:
                assert stored(db, victim) == WHOLE[write]
                break
            await still_works(target, aio, db, victim + "-after")
        assert at > 2, "a write of one statement"


# -- a connection lost after a statement ran (`prepared.tap`) -------------------


class CloseAfter:
    """A `prepared.Tap` that closes SQLite's connection under the saver just
    after statement ``at`` ran (on the production path, which a
    ``before_cursor_execute`` listener would switch off)."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def before(self, conn: Connection, sql: str) -> None:
        pass

    def after(self, conn: Connection, sql: str) -> None:
        self.seen += 1
        if self.seen == self.at:
            close_sqlite(conn.connection.dbapi_connection)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("operation", ["put", "setup"])
def test_sqlite_closed_after_a_statement(
    backend: Any, operation: str, db: Engine, thread_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's connection closed just after the first statement of a write
    (a BEGIN IMMEDIATE, or the write itself): the saver runs it again on a
    new connection, never lets sqlite3's own ProgrammingError ("Cannot
    operate on a closed database") out unconverted: neither from closing
    the finished statement's cursor (`prepared._run`) nor from asking the
    dead connection whether it is in a transaction (`transactions.atomic`)."""
    from sqlsaver.execution import prepared

    with SQLSaver.from_url(backend.sync_url) as saver:
        saver.setup()
        closer = CloseAfter(1)
        if operation == "setup":
            # Alembic's statements pass no tap: a cursor listener sees them
            # (and sqlsaver's own too, on its "watched" path).
            def after(conn: Connection, *_: Any) -> None:
                closer.after(conn, "")

            event.listen(Engine, "after_cursor_execute", after)
            try:
                saver.setup()
            finally:
                event.remove(Engine, "after_cursor_execute", after)
            assert closer.seen > 1
            return
        monkeypatch.setattr(prepared, "tap", closer)
        saver.put(config_of(thread_id), empty_checkpoint(), {}, {})
    assert stored(db, thread_id)["checkpoints"] == 1


# -- a psycopg connection that fails before libpq calls it broken ------------------


class LeaveMidCommand:
    """Before the ``at``-th statement, leaves the psycopg connection under
    it halfway through a command: a query sent, its reply never read, as a
    reply cut off by a failing network leaves it. psycopg then refuses the
    next statement ("another command is already in progress"), an
    OperationalError with no SQLSTATE, while libpq still calls the
    connection OK: all that SQLAlchemy's psycopg dialect asks."""

    def __init__(self, at: int) -> None:
        self.at, self.seen = at, 0

    def before(self, conn: Connection, sql: str) -> None:
        self.seen += 1
        if self.seen == self.at:
            conn.connection.driver_connection.pgconn.send_query(b"SELECT 1")  # type: ignore[union-attr]

    def after(self, conn: Connection, sql: str) -> None:
        pass


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("kind", ["from_url", "engine"])
async def test_psycopg_connection_left_mid_command_is_run_again(
    backend: Any, kind: str, db: Engine, thread_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write (then a read) whose psycopg connection is left halfway
    through a command before its first statement: the saver takes that
    connection for lost (`psycopg_raw.connection_lost`), invalidates it and
    runs the operation again on another, where SQLAlchemy alone would keep
    it and give up. Both operations complete; the next ones work."""
    from sqlsaver.execution import prepared

    async with saver_on(kind, False, backend) as target:
        await put(target.saver, False, thread_id + "-warm", a="warm")  # the schema check
        monkeypatch.setattr(prepared, "tap", LeaveMidCommand(1))
        await put(target.saver, False, thread_id, a="first")
        monkeypatch.setattr(prepared, "tap", LeaveMidCommand(1))
        found = await call(False, target.saver, "get_tuple", config_of(thread_id))
        assert found.checkpoint["channel_values"] == {"a": ["first"]}
        monkeypatch.setattr(prepared, "tap", None)
        await still_works(target, False, db, thread_id + "-after")
    assert stored(db, thread_id) == {"checkpoints": 1, "blobs": 1, "writes": 0}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("kind", ["connection", "session"])
async def test_psycopg_connection_left_mid_command_is_invalidated_for_the_caller(
    backend: Any, kind: str, db: Engine, thread_id: str
) -> None:
    """On a caller's Connection or Session, a write whose psycopg connection
    is left halfway through a command before the SAVEPOINT that SQLAlchemy
    itself sends: the saver raises the driver's error with the connection
    invalidated, as for any lost connection, so that the caller's rollback
    and next transaction work. SQLAlchemy alone would keep the connection,
    and its rollback would fail the same way ("another command is already
    in progress")."""

    def leave(conn: Connection, _name: str) -> None:
        conn.connection.driver_connection.pgconn.send_query(b"SELECT 1")  # type: ignore[union-attr]

    async with saver_on(kind, False, backend) as target:
        await put(target.saver, False, thread_id + "-warm", a="warm")  # the schema check
        await target.commit()
        await target.begin()
        event.listen(Engine, "savepoint", leave)
        try:
            with pytest.raises(DBAPIError) as raised:
                await put(target.saver, False, thread_id, a="first")
        finally:
            event.remove(Engine, "savepoint", leave)
        assert raised.value.connection_invalidated, raised.value
        await target.rollback()
        await target.begin()
        await still_works(target, False, db, thread_id + "-after")
    assert stored(db, thread_id) == {"checkpoints": 0, "blobs": 0, "writes": 0}
