"""What the hot operations send to the database, on every backend.

Speed is the benchmark's business (``nox -s bench``), never a timed assert;
what the tests pin down is its cause: the number of statements and
transactions each operation costs.

- `get_tuple` and a `list` page: one connection (one the saver keeps
  open), and on PostgreSQL one statement, whatever the page size (the
  checkpoints with their writes and their channel values), with no BEGIN
  or COMMIT. Two on SQLite and MySQL/MariaDB, which cannot expand the
  channel versions in SQL: the checkpoints, then their writes and values
  by one narrow statement, which also finds the checkpoints still stored
  (so no transaction: one is taken only to read again, where one went
  meanwhile). On PostgreSQL, one more for checkpoints whose versions are
  not in their column.
- `put` and `put_writes` on PostgreSQL: one statement and no transaction
  (a chained insert is atomic on its own); elsewhere one statement per
  table, in a transaction, except where all rows go to one insert: that
  statement alone, with no BEGIN on SQLite.

Small values (None, bools, numbers, short strings) are kept in their
checkpoint's row instead of a blob row each, and read back from there.

Statements are recorded with a ``before_cursor_execute`` listener, which
also proves that listeners (tracing, logging) still see every statement
sqlsaver runs on its fast path.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import Backend
from helpers import call
from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    create_engine,
    event,
    literal_column,
    make_url,
    select,
    union_all,
)
from sqlalchemy.exc import DataError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool, Pool

from sqlsaver import SQLSaver, codec, engines
from sqlsaver.execution.prepared import Prepared, padded, slots
from sqlsaver.models import blobs


@contextmanager
def transaction_ends(backend: Backend) -> Iterator[dict[str, int]]:
    """On MySQL, how many COMMITs and ROLLBACKs the server ran in the block
    (its global counters: the tests run one at a time), including those a
    pool sends when a connection goes back, which no event shows."""
    ends = {"commit": 0, "rollback": 0}
    if backend.name != "mysql":
        yield ends
        return
    probe = create_engine(backend.sync_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def counters(conn: Any) -> dict[str, int]:
        rows = conn.exec_driver_sql(
            "SHOW GLOBAL STATUS WHERE Variable_name IN ('Com_commit', 'Com_rollback')"
        )
        return {name.lower()[4:]: int(value) for name, value in rows}

    try:
        with probe.connect() as conn:
            before = counters(conn)
            yield ends
            after = counters(conn)
        ends.update({k: after[k] - before[k] for k in ends})
    finally:
        probe.dispose()


def sent(seen: list[str]) -> list[str]:
    """The statements sent, without SQLAlchemy's transaction markers."""
    return [s for s in seen if not s.startswith("<")]


class Recording(list[str]):
    """What `recorded` saw, in order, and the driver connections that the
    statements ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: set[int] = set()


@contextmanager
def recorded() -> Iterator[Recording]:
    """Each statement's first words, BEGIN/COMMIT of any transaction
    SQLAlchemy opens, and each connection checked out of a pool, on every
    engine, in order."""
    seen = Recording()

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        words = " ".join(sql.split()).upper()
        seen.append(re.sub(r"\s*\(.*", "", words)[:40])
        seen.connections.add(id(conn.connection.dbapi_connection))

    def begin(conn: Any) -> None:
        seen.append("<begin>")

    def checkout(*args: Any) -> None:
        seen.append("<checkout>")

    def commit(conn: Any) -> None:
        seen.append("<commit>")

    listeners = [("before_cursor_execute", statement), ("begin", begin), ("commit", commit)]
    for name, fn in listeners:
        event.listen(Engine, name, fn)
    event.listen(Pool, "checkout", checkout)
    try:
        yield seen
    finally:
        for name, fn in listeners:
            event.remove(Engine, name, fn)
        event.remove(Pool, "checkout", checkout)


async def _thread(aio: bool, saver: Any, thread_id: str, steps: int) -> dict[str, Any]:
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    for step in range(steps):
        checkpoint = create_checkpoint(checkpoint, None, step)
        checkpoint["channel_values"] = {"messages": ["m"] * step, "step": step}
        checkpoint["channel_versions"] = {"messages": f"{step + 1:032}.1", "step": f"{step + 1}"}
        new = dict(checkpoint["channel_versions"])
        config = await call(aio, saver, "put", config, checkpoint, {"step": step}, new)
        await call(aio, saver, "put_writes", config, [("messages", ["w"])], str(uuid.uuid4()))
    return config


# What `transactions.snapshot` sends before and after a read of several
# statements, on a connection whose statements a listener watches (MySQL:
# two statements, one script where no one watches).
def reads(backend: Backend, seen: Recording) -> int:
    """How many reading statements were sent, asserting that they were all
    that was sent (no BEGIN or COMMIT: where there are two, the second
    checks what the first found, see `ops.read._read_tuples`), on one
    connection: one the saver keeps open between operations, with no
    checkout from the pool (`kept.keeps_connections`)."""
    statements = sent(seen)
    assert all(s.startswith(("SELECT", "WITH C AS")) for s in statements), seen
    assert "<commit>" not in seen, seen
    assert len(seen.connections) == 1, seen
    assert "<checkout>" not in seen, seen
    return len(statements)


async def test_reads_take_one_connection_and_no_transaction(
    backend: Backend, saver: Any, aio: bool, thread_id: str
) -> None:
    await _thread(aio, saver, thread_id, 30)
    config = {"configurable": {"thread_id": thread_id}}
    await call(aio, saver, "get_tuple", config)  # the schema check is behind us
    # PostgreSQL: one union; elsewhere the checkpoints, then their writes and
    # values (`_tuples_statement`).
    statements = 1 if backend.name == "postgres" else 2

    with recorded() as seen:
        found = await call(aio, saver, "get_tuple", config)
    assert found.metadata["step"] == 29 and found.pending_writes
    assert found.checkpoint["channel_values"] == {"messages": ["m"] * 29, "step": 29}
    assert reads(backend, seen) == statements

    with recorded() as seen:
        page = await call(aio, saver, "list", config, limit=25)
    assert [t.metadata["step"] for t in page] == list(range(29, 4, -1))
    assert all(t.pending_writes for t in page)
    assert all(t.checkpoint["channel_values"]["step"] == t.metadata["step"] for t in page)
    assert all(len(t.checkpoint["channel_values"]["messages"]) == t.metadata["step"] for t in page)
    assert reads(backend, seen) == statements


@pytest.mark.parametrize(
    "versions",
    [{"messages": 3, "step": 3}, {"messages": 2.5, "step": "3"}],
    ids=["int versions", "a float version"],
)
async def test_versions_outside_their_column_take_a_second_statement(
    backend: Backend, saver: Any, aio: bool, thread_id: str, versions: dict[str, Any]
) -> None:
    """Versions that the column cannot give back exactly stay inside the
    checkpoint bytes: the values then come by a second statement, whole."""
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
    channels = list(versions)
    checkpoint["channel_values"] = {channels[0]: ["a", "b"], "step": 1}
    checkpoint["channel_versions"] = versions
    config = await call(aio, saver, "put", config, checkpoint, {}, versions)
    await call(aio, saver, "get_tuple", config)  # the schema check is behind us

    with recorded() as seen:
        found = await call(aio, saver, "get_tuple", config)
    with recorded() as listing:
        listed = await call(aio, saver, "list", config)
    for tuple_ in (found, *listed):
        assert tuple_.checkpoint["channel_versions"] == versions
        assert tuple_.checkpoint["channel_values"] == {channels[0]: ["a", "b"], "step": 1}
    assert reads(backend, seen) == reads(backend, listing) == 2


def assert_one_write(backend: Backend, seen: list[str], tables: int) -> None:
    """What a write of ``tables`` inserts sent: on PostgreSQL one chained
    statement and no transaction; elsewhere (AUTOCOMMIT engines) the
    saver's own BEGIN (IMMEDIATE on SQLite: the writer's lock taken up
    front), the inserts and COMMIT, and no COMMIT of SQLAlchemy's."""
    inserts = [s for s in sent(seen) if s.startswith("INSERT")]
    if backend.name == "postgres":
        assert sent(seen) == ["WITH INSERT_0 AS"] and "<commit>" not in seen, seen
        return
    begin = "BEGIN IMMEDIATE" if backend.name == "sqlite" else "BEGIN"
    assert sent(seen) == [begin, *inserts, "COMMIT"] and len(inserts) == tables, seen
    assert "<commit>" not in seen, seen


async def test_writes_are_one_statement_per_insert_and_one_on_postgres(
    backend: Backend, saver: Any, aio: bool, thread_id: str
) -> None:
    config = await _thread(aio, saver, thread_id, 1)
    checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
    checkpoint["channel_values"] = {"messages": ["a", "b"], "step": 1}
    checkpoint["channel_versions"] = {"messages": "2", "step": "2"}

    with recorded() as seen:
        config = await call(
            aio, saver, "put", config, checkpoint, {}, {"messages": "2", "step": "2"}
        )
    assert_one_write(backend, seen, tables=2)

    with recorded() as seen:
        writes = [("messages", ["x"]), ("step", 2), ("__interrupt__", "stop")]
        await call(aio, saver, "put_writes", config, writes, "task-1")
    assert_one_write(backend, seen, tables=2)  # two inserts: one replaces, one keeps

    # Ordinary writes alone are one insert, atomic on its own: no BEGIN on
    # SQLite either, and no transaction at all on PostgreSQL and MySQL.
    with recorded() as seen:
        await call(aio, saver, "put_writes", config, [("messages", ["y"]), ("step", 3)], "task-2")
    assert sent(seen) == ["INSERT INTO SQLSAVER_WRITES"] and "<commit>" not in seen, seen

    stored = await call(aio, saver, "get_tuple", config)
    assert stored.checkpoint["channel_values"] == {"messages": ["a", "b"], "step": 1}
    assert [(t, c, v) for t, c, v in stored.pending_writes] == [
        ("task-1", "__interrupt__", "stop"),
        ("task-1", "messages", ["x"]),
        ("task-1", "step", 2),
        ("task-2", "messages", ["y"]),
        ("task-2", "step", 3),
    ]


def test_only_exact_json_safe_string_versions_go_to_their_column() -> None:
    assert codec.columnar({"messages": "00000000000000000000000000000002.0.5", "x": "1"})
    assert codec.columnar({})
    assert codec.columnar({"é": "ü", "b": "2"})
    unsafe = ({"a": "1\x00"}, {"a\x00": "1"}, {"\ud800": "1"}, {"a": "\udc00"}, {"a": "\ud800"})
    not_strings = ({"a": 1}, {"a": 1.5}, {"a": "1", "b": 2}, {"a": type("S", (str,), {})("1")})
    for versions in (*unsafe, *not_strings):
        assert not codec.columnar(versions), versions


@pytest.mark.parametrize(
    "document",
    [
        '{"messages": "00000000000000000000000000000002.0.5", "x": "1"}',
        "{}",
        '{"a":"\\u0000 \\ud800 é \\"q\\""}',
        ' {"a": 1} ',  # spaces around: json.loads takes it
        '[1, 2.5, null, true, "NaN"]',
        b'{"from": "psycopg", "as": "bytes"}',
        memoryview('{"ü": "UTF-8 in a memoryview"}'.encode()),
        '{"a": "UTF-16, as json.loads detects it"}'.encode("utf-16-le"),
    ],
)
def test_json_columns_decode_as_json_loads_does(document: Any) -> None:
    expected = json.loads(bytes(document) if isinstance(document, memoryview) else document)
    assert engines.json_loads(document) == expected


@pytest.mark.parametrize("document", ['{"a": }', '{"a": 1} x', "", b"\xff"])
def test_bad_json_in_a_column_fails_as_json_loads_does(document: Any) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(document)
    with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
        engines.json_loads(document)


async def test_small_values_are_kept_in_the_checkpoint_row(
    backend: Backend, saver: Any, aio: bool, thread_id: str
) -> None:
    """None, bools, numbers and strings of up to `codec.SMALL_STRING`
    characters live in their checkpoint's own serde bytes, not in a blob
    row each; every checkpoint keeps all of its own, so reads, lists and
    the delta walk find them where they were written."""
    small = {"none": None, "flag": True, "step": 3, "ratio": 0.5, "route": "r" * 64}
    large = {"text": "t" * 65, "items": [1, 2]}
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    first = create_checkpoint(empty_checkpoint(), None, 1)
    first["channel_values"] = {**small, **large}
    first["channel_versions"] = {ch: "1" for ch in first["channel_values"]}
    config = await call(aio, saver, "put", config, first, {}, dict(first["channel_versions"]))
    second = create_checkpoint(first, None, 2)  # only `step` changes
    second["channel_values"] = {**small, **large, "step": 4}
    second["channel_versions"] = {**first["channel_versions"], "step": "2"}
    config = await call(aio, saver, "put", config, second, {}, {"step": "2"})

    assert {channel for channel, _ in _blob_keys(backend, thread_id)} == set(large)
    found = await call(aio, saver, "get_tuple", config)
    assert found.checkpoint["channel_values"] == {**small, **large, "step": 4}
    listed = await call(aio, saver, "list", {"configurable": {"thread_id": thread_id}})
    assert [t.checkpoint["channel_values"]["step"] for t in listed] == [4, 3]
    assert all(t.checkpoint["channel_values"]["route"] == "r" * 64 for t in listed)
    history = await call(
        aio, saver, "get_delta_channel_history", config=config, channels=["step", "items"]
    )
    assert history == {
        "step": {"writes": [], "seed": 3},
        "items": {"writes": [], "seed": [1, 2]},
    }


def _blob_keys(backend: Backend, thread_id: str) -> list[tuple[str, str]]:
    """The (channel, version) keys of the thread's blob rows."""
    engine = create_engine(backend.sync_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            query = select(blobs.c.channel, blobs.c.version).where(blobs.c.thread_id == thread_id)
            return [tuple(r) for r in conn.execute(query)]
    finally:
        engine.dispose()


def one_message(thread_id: str) -> tuple[dict[str, Any], Any]:
    """A thread's config, and a first checkpoint holding one message."""
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
    checkpoint["channel_values"] = {"messages": ["a"]}
    checkpoint["channel_versions"] = {"messages": "1"}
    return config, checkpoint


def test_listeners_added_later_see_the_hot_statements(backend: Backend, thread_id: str) -> None:
    """Instrumentation attached to an application's engine after the saver
    is working (OpenTelemetry's SQLAlchemy instrumentor does this) sees the
    statements of the hot operations, which otherwise go straight to the
    driver's cursor."""
    engine = create_engine(backend.sync_url, poolclass=NullPool)
    saver = SQLSaver(engine)
    config, checkpoint = one_message(thread_id)
    try:
        config = saver.put(config, checkpoint, {}, {"messages": "1"})
        assert saver.get_tuple(config) is not None  # unobserved so far
        seen: list[str] = []

        def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            seen.append(" ".join(sql.split()).upper()[:30])

        event.listen(engine, "after_cursor_execute", statement)
        saver.put_writes(config, [("messages", ["b"])], "task-1")
        found = saver.get_tuple(config)
        assert found is not None and found.pending_writes == [("task-1", "messages", ["b"])]
        assert any(s.startswith("INSERT INTO SQLSAVER_WRITES") for s in seen), seen
        assert sum(s.startswith(("SELECT", "WITH C AS")) for s in seen) >= 1, seen
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("driver", ["psycopg", "psycopg_async"])
async def test_psycopg_statements_carry_native_placeholders(
    backend: Backend, sync_saver: SQLSaver, thread_id: str, driver: str
) -> None:
    """On psycopg, sync and async, a prepared statement carries
    PostgreSQL's own ``$n`` placeholders and runs on a raw cursor: psycopg's
    default cursor parses a statement of more than 50 parameters or 4096
    characters again at each run. A parameter named twice is one, a "%" is
    itself, a driver's error comes as SQLAlchemy's, and a connection with
    a listener runs the dialect's own ``%(name)s`` form, with the same rows."""
    config: dict[str, Any] = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = create_checkpoint(empty_checkpoint(), None, 1)
    channels = ["a", "b", "100%"]
    checkpoint["channel_values"] = {ch: [ch] * 3 for ch in channels}  # blob rows
    checkpoint["channel_versions"] = dict.fromkeys(channels, "1")
    sync_saver.put(config, checkpoint, {}, dict.fromkeys(channels, "1"))
    of_thread = blobs.c.thread_id == bindparam("thread_id")
    stmt = union_all(
        select(blobs.c.channel).where(
            of_thread, blobs.c.channel.in_(slots("channel", 64, blobs.c.channel.type))
        ),
        select(blobs.c.channel).where(of_thread, blobs.c.channel == literal_column("'100%'")),
    )
    url = make_url(backend.sync_url).set(drivername=f"postgresql+{driver}")
    aio = driver == "psycopg_async"
    engine = (create_async_engine if aio else create_engine)(
        url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    prepared = Prepared(stmt, engine.dialect)
    assert "$65" in prepared.sql and "$66" not in prepared.sql and "%(" not in prepared.sql
    count, params = padded("channel", ["a", *(f"x{i}" for i in range(60))])
    assert count == 64
    seen: list[str] = []

    failing = Prepared(select(literal_column("1 / 0").label("x")), engine.dialect)

    def rows(conn: Connection) -> tuple[list[Any], list[Any]]:
        # A driver's error comes as SQLAlchemy's, and the connection goes on.
        with pytest.raises(DataError, match="division by zero"):
            failing.rows(conn, {})
        assert not conn.invalidated
        plain = prepared.rows(conn, {"thread_id": thread_id, **params})
        event.listen(conn, "before_cursor_execute", lambda c, cur, sql, *a: seen.append(sql))
        return plain, prepared.rows(conn, {"thread_id": thread_id, **params})

    try:
        if aio:
            async with engine.connect() as async_conn:
                plain, watched = await async_conn.run_sync(rows)
        else:
            with engine.connect() as conn:
                plain, watched = rows(conn)
    finally:
        disposed = engine.dispose()
        if aio:
            await disposed
    assert sorted(r.channel for r in plain) == ["100%", "a"] == sorted(r.channel for r in watched)
    assert len(seen) == 1 and "%(channel_63)s" in seen[0] and "'100%%'" in seen[0]


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
async def test_mysql_sends_no_rollback_or_commit_but_its_own(
    backend: Backend, saver: Any, aio: bool, thread_id: str
) -> None:
    """On MySQL every COMMIT or ROLLBACK is a round trip (PyMySQL and asyncmy
    send whatever they are asked). A read sends none, not even when its
    connection goes back to the pool; a write of one insert none; a write
    of two inserts its own COMMIT only. Counted by the server, as
    the pool's ROLLBACK on return shows in no event. (Without listeners:
    statements a listener watches go through SQLAlchemy's execute, whose
    transaction bookkeeping adds a ROLLBACK.)"""
    config = await _thread(aio, saver, thread_id, 3)
    await call(aio, saver, "get_tuple", config)  # the schema check is behind us
    checkpoint = create_checkpoint(empty_checkpoint(), None, 9)
    checkpoint["channel_values"] = {"messages": ["a"], "step": 9}
    checkpoint["channel_versions"] = {"messages": "9", "step": "9"}

    with transaction_ends(backend) as ends:
        assert (await call(aio, saver, "get_tuple", config)).pending_writes
        thread = {"configurable": {"thread_id": thread_id}}
        assert len(await call(aio, saver, "list", thread, limit=2)) == 2
    assert ends == {"commit": 0, "rollback": 0}
    with transaction_ends(backend) as ends:
        await call(aio, saver, "put_writes", config, [("messages", ["z"])], "task-9")
    assert ends == {"commit": 0, "rollback": 0}
    with transaction_ends(backend) as ends:
        await call(aio, saver, "put", config, checkpoint, {}, {"messages": "9", "step": "9"})
    assert ends == {"commit": 1, "rollback": 0}


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
async def test_mysql_put_is_one_round_trip(
    backend: Backend, saver: Any, aio: bool, thread_id: str
) -> None:
    """On MySQL a put (two inserts, atomic) goes to the server as one query:
    BEGIN, the inserts and COMMIT together (the server's general log keeps
    each query a client sends as one entry)."""
    config = await _thread(aio, saver, thread_id, 1)  # the schema check is behind us
    checkpoint = create_checkpoint(empty_checkpoint(), None, 2)
    checkpoint["channel_values"] = {"messages": ["a", "b"], "step": 2}
    checkpoint["channel_versions"] = {"messages": "3", "step": "3"}
    admin = create_engine(backend.sync_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            log, output = conn.exec_driver_sql(
                "SELECT @@global.general_log, @@global.log_output"
            ).one()
            conn.exec_driver_sql("SET GLOBAL log_output = 'TABLE'")
            conn.exec_driver_sql("SET GLOBAL general_log = 1")
            try:
                config = await call(aio, saver, "put", config, checkpoint, {}, {"messages": "3"})
            finally:
                conn.exec_driver_sql("SET GLOBAL general_log = 0")
                conn.exec_driver_sql(f"SET GLOBAL log_output = '{output}'")
            logged = conn.exec_driver_sql(
                "SELECT argument FROM mysql.general_log WHERE command_type = 'Query'"
            )
            texts = [a if isinstance(a, str) else bytes(a).decode() for (a,) in logged]
            # The thread id as the driver wrote it: PyMySQL in hex, asyncmy as is.
            spellings = (thread_id, thread_id.encode().hex())
            queries = [t for t in texts if any(spelling in t for spelling in spellings)]
            conn.exec_driver_sql("TRUNCATE mysql.general_log")
            conn.exec_driver_sql(f"SET GLOBAL general_log = {int(log)}")
    finally:
        admin.dispose()
    assert len(queries) == 1, queries
    (query,) = queries
    assert query.startswith("BEGIN;") and query.rstrip().endswith("COMMIT"), query
    assert "INSERT INTO sqlsaver_blobs" in query and "INSERT INTO sqlsaver_checkpoints" in query
    stored = await call(aio, saver, "get_tuple", config)
    assert stored.checkpoint["channel_values"] == {"messages": ["a", "b"], "step": 2}


def test_sqlite_list_page_values_stay_within_the_oldest_parameter_limit(tmp_path: Any) -> None:
    """A page's channel values on SQLite are looked up by key in chunks: a
    hundred checkpoints with six new values each (600 versions) stay within
    the 999 parameters of SQLite before 3.32 (set here on a newer one)."""
    url = f"sqlite:///{tmp_path}/limit.db"
    with SQLSaver.from_url(url) as saver:
        saver.setup()

    def limit(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    event.listen(Pool, "connect", limit)
    try:
        with SQLSaver.from_url(url) as saver:
            with saver._owned_engine.connect() as conn:
                driver = conn.connection.driver_connection
                assert driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) == 999
            config: dict[str, Any] = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
            checkpoint = empty_checkpoint()
            channels = ("a", "b", "c", "d", "e", "f")
            for step in range(100):
                checkpoint = create_checkpoint(checkpoint, None, step)
                checkpoint["channel_values"] = {ch: [ch] * (step + 1) for ch in channels}
                checkpoint["channel_versions"] = {
                    ch: f"{step + 1:032}.{i}" for i, ch in enumerate(channels)
                }
                new = dict(checkpoint["channel_versions"])
                config = saver.put(config, checkpoint, {"step": step}, new)
            page = list(saver.list({"configurable": {"thread_id": "t"}}, limit=100))
    finally:
        event.remove(Pool, "connect", limit)
    assert [t.metadata["step"] for t in page] == list(range(99, -1, -1))
    for t in page:
        step = t.metadata["step"]
        assert t.checkpoint["channel_values"] == {ch: [ch] * (step + 1) for ch in channels}


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_psycopg_connections_keep_their_own_cursors(backend: Backend, thread_id: str) -> None:
    """An engine whose psycopg connections make cursors of their own
    (``cursor_factory``, such as ``ClientCursor``) keeps them: the hot
    statements run on them, in the dialect's ``%(name)s`` form, not on a
    raw cursor."""
    import psycopg

    ran: list[str] = []

    class Recording(psycopg.ClientCursor):  # type: ignore[type-arg]
        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            ran.append(str(query))
            return super().execute(query, params, **kwargs)

    engine = create_engine(backend.sync_url, connect_args={"cursor_factory": Recording})
    saver = SQLSaver(engine)
    config, checkpoint = one_message(thread_id)
    try:
        config = saver.put(config, checkpoint, {}, {"messages": "1"})
        saver.put_writes(config, [(f"ch{i}", [i]) for i in range(10)], "task-1")
        found = saver.get_tuple(config)
    finally:
        engine.dispose()
    assert found is not None and len(found.pending_writes) == 10
    assert not [sql for sql in ran if "$1" in sql]
    assert sum("sqlsaver_" in sql and "%(" in sql for sql in ran) >= 3, ran
