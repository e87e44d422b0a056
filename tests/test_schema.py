"""A schema of its own (``schema=``), on real PostgreSQL and MySQL/MariaDB.

Each test gets a new database on the backend's server (`server_database`)
holding two empty schemas, ``app_a`` and ``app_b`` (on MySQL, schemas are
databases: two more new ones), all dropped afterwards.

1. Two apps, one database: each keeps its own checkpoints (a real graph
   each, with the same thread id), sync and async, given a URL or one
   shared Engine, Connection or Session (one dialect, so one cache of
   compiled statements for both); the tables and version tables really are
   in each schema (information_schema), and the default is left empty.
2. They migrate apart: one at head while the other is at 0002 or absent;
   a downgrade of one leaves the other as it was.
3. The default (no schema) lands where it always did.
4. Bad names, SQLite, and a schema that does not exist are refused, each
   with what to do; a caller's Connection gets its options back.
5. The CLI's ``--schema`` (upgrade, current, check, sweep), the upgrade
   command a `SchemaNotReadyError` suggests, and ``copy --to-schema``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from typing import Any

import pytest
from conftest import Backend
from helpers import server_database
from langgraph.graph import START, MessagesState, StateGraph
from sqlalchemy import bindparam, create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from test_migrations import alembic_cli, cli

from sqlsaver import (
    AsyncSQLSaver,
    SchemaMissingError,
    SchemaNotReadyError,
    SQLSaver,
    copy_threads,
    migrate,
)
from sqlsaver.models import Base

A, B = "app_a", "app_b"
TABLES = {*Base.metadata.tables, migrate.VERSION_TABLE}
BINDS = ["url", "engine", "connection", "session"]


class Place:
    """A database of the test's own, and its schemas ``A`` and ``B`` (on
    MySQL, databases of their own beside it), by their real names."""

    def __init__(self, backend: Backend, stack: ExitStack) -> None:
        self.backend = backend.name
        self.sync_url = stack.enter_context(server_database(backend.sync_url, "sqlsaver_schema"))
        self.database = make_url(self.sync_url).database
        self.async_url = (
            make_url(backend.async_url).set(database=self.database).render_as_string(False)
        )
        self.names: dict[str, str] = {}
        for schema in (A, B):
            if self.backend == "postgres":
                self.names[schema] = schema
                with self.admin() as conn:
                    conn.execute(text(f"CREATE SCHEMA {schema}"))
            else:  # a database of its own, dropped afterwards
                url = stack.enter_context(server_database(backend.sync_url, schema))
                self.names[schema] = str(make_url(url).database)

    @contextmanager
    def admin(self) -> Iterator[Any]:
        engine = create_engine(self.sync_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            engine.dispose()

    @property
    def default_schema(self) -> str:
        return "public" if self.backend == "postgres" else str(self.database)

    def tables(self) -> dict[str, set[str]]:
        """sqlsaver's tables per schema they are in (information_schema)."""
        found: dict[str, set[str]] = {}
        with self.admin() as conn:
            query = text(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name LIKE 'sqlsaver%' AND table_schema IN :schemas"
            ).bindparams(bindparam("schemas", expanding=True))
            schemas = [self.default_schema, *self.names.values()]
            rows = conn.execute(query, {"schemas": schemas})
            for schema, table in rows:
                found.setdefault(schema, set()).add(table)
        return found

    def version(self, schema: str) -> list[str]:
        with self.admin() as conn:
            return list(
                conn.execute(text(f"SELECT version_num FROM {schema}.{migrate.VERSION_TABLE}"))
                .scalars()
                .all()
            )


# The tests that need a place take the servers only: SQLite takes no schema
# (test_sqlite_refuses_a_schema).
servers = pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)


@pytest.fixture
def place(backend: Backend) -> Iterator[Place]:
    assert backend.name != "sqlite", "mark the test @servers"
    with ExitStack() as stack:
        yield Place(backend, stack)


def graph_of(saver: Any, app: str) -> Any:
    builder = StateGraph(MessagesState)
    builder.add_node("reply", lambda state: {"messages": [("ai", f"from {app}")]})
    builder.add_edge(START, "reply")
    return builder.compile(checkpointer=saver)


def said(state: Any) -> list[str]:
    return [m.content for m in state.values["messages"]]


CONFIG = {"configurable": {"thread_id": "same-thread"}}


def sync_savers(stack: ExitStack, place: Place, bind: str) -> dict[str, SQLSaver]:
    """A saver per schema: from_url, or sharing one Engine, Connection or
    Session (whose transaction is committed when the stack closes)."""
    if bind == "url":
        return {
            s: stack.enter_context(SQLSaver.from_url(place.sync_url, schema=place.names[s]))
            for s in (A, B)
        }
    engine = create_engine(place.sync_url)
    stack.callback(engine.dispose)
    target: Any = engine
    if bind == "connection":
        target = stack.enter_context(engine.connect())
    elif bind == "session":
        target = stack.enter_context(Session(engine))
    if target is not engine:
        stack.callback(target.commit)
    return {s: SQLSaver(target, schema=place.names[s]) for s in (A, B)}


async def async_savers(stack: AsyncExitStack, place: Place, bind: str) -> dict[str, AsyncSQLSaver]:
    """`sync_savers`, async."""
    if bind == "url":
        return {
            s: await stack.enter_async_context(
                AsyncSQLSaver.from_url(place.async_url, schema=place.names[s])
            )
            for s in (A, B)
        }
    engine = create_async_engine(place.async_url)
    stack.push_async_callback(engine.dispose)
    target: Any = engine
    if bind == "connection":
        target = await stack.enter_async_context(engine.connect())
    elif bind == "session":
        target = await stack.enter_async_context(AsyncSession(engine))
    if target is not engine:
        stack.push_async_callback(target.commit)
    return {s: AsyncSQLSaver(target, schema=place.names[s]) for s in (A, B)}


# -- 1: two apps, one database -------------------------------------------------


@servers
@pytest.mark.parametrize("bind", BINDS)
async def test_two_apps_keep_separate_checkpoints(place: Place, aio: bool, bind: str) -> None:
    if aio:
        async with AsyncExitStack() as stack:
            savers = await async_savers(stack, place, bind)
            for app, saver in savers.items():
                await saver.setup()
                await graph_of(saver, app).ainvoke({"messages": [("user", app)]}, CONFIG)
            for app, saver in savers.items():
                state = await graph_of(saver, app).aget_state(CONFIG)
                assert said(state) == [app, f"from {app}"]
                assert len([c async for c in saver.alist(None)]) == 3  # input, loop, reply
    else:
        with ExitStack() as stack:
            sync = sync_savers(stack, place, bind)
            for app, saver in sync.items():
                saver.setup()
                graph_of(saver, app).invoke({"messages": [("user", app)]}, CONFIG)
            for app, saver in sync.items():
                assert said(graph_of(saver, app).get_state(CONFIG)) == [app, f"from {app}"]
                assert len(list(saver.list(None))) == 3
    tables = place.tables()
    assert tables == {place.names[A]: TABLES, place.names[B]: TABLES}  # none in the default
    assert place.version(place.names[A]) == place.version(place.names[B]) == [migrate.HEAD]


@servers
async def test_from_url_savers_in_one_process_share_no_statement(place: Place) -> None:
    """Two from_url savers of different schemas (two engines), and a third
    on the default schema, interleaved: the statements each compiled stay
    its own."""
    with (
        SQLSaver.from_url(place.sync_url, schema=place.names[A]) as in_a,
        SQLSaver.from_url(place.sync_url, schema=place.names[B]) as in_b,
        SQLSaver.from_url(place.sync_url) as default,
    ):
        for saver in (in_a, in_b, default):
            saver.setup()
        graph_of(in_a, A).invoke({"messages": [("user", A)]}, CONFIG)
        assert in_b.get_tuple(CONFIG) is None and default.get_tuple(CONFIG) is None
        graph_of(default, "default").invoke({"messages": [("user", "d")]}, CONFIG)
        assert said(graph_of(in_a, A).get_state(CONFIG)) == [A, f"from {A}"]
        assert in_b.get_tuple(CONFIG) is None


# -- 2: each schema migrates on its own ---------------------------------------


@servers
def test_schemas_migrate_independently(place: Place) -> None:
    a, b = place.names[A], place.names[B]
    engine = create_engine(place.sync_url, poolclass=NullPool)
    try:
        # The default schema at head first: a revision must look for what
        # it creates in its own schema, not find the default's and skip it.
        migrate.upgrade(engine)
        migrate.upgrade(engine, schema=a)
        assert migrate.status(engine, schema=b) == "missing"  # absent
        migrate.upgrade(engine, "0002", schema=b)
        assert (migrate.current(engine, schema=a), migrate.current(engine, schema=b)) == (
            migrate.HEAD,
            "0002",
        )
        migrate.downgrade(engine, "0001")  # the default's own, alone
        with SQLSaver(engine, schema=a) as saver:  # at head: works
            at = {"configurable": {"thread_id": "t", "checkpoint_ns": "", "checkpoint_id": "1"}}
            saver.put_writes(at, [("c", 1)], "task")
            assert saver.get_tuple(at) is None  # writes, but no checkpoint
        with pytest.raises(SchemaNotReadyError, match=rf"0002.*--schema {b}"):
            SQLSaver(engine, schema=b).get_tuple(CONFIG)
        migrate.downgrade(engine, "base", schema=a)
        assert place.version(a) == [] and place.version(b) == ["0002"]
        assert place.tables()[b] == {
            "sqlsaver_checkpoints",
            "sqlsaver_blobs",
            "sqlsaver_writes",
            migrate.VERSION_TABLE,
        }
        assert place.tables()[a] == {migrate.VERSION_TABLE}  # Alembic's, emptied
        migrate.upgrade(engine, schema=b)
        assert place.version(b) == [migrate.HEAD] and place.version(a) == []
        assert migrate.current(engine) == "0001"
    finally:
        engine.dispose()


# -- 3: the default -------------------------------------------------------------


@servers
async def test_default_lands_where_it_did(place: Place, aio: bool) -> None:
    if aio:
        async with AsyncSQLSaver.from_url(place.async_url) as saver:
            await saver.setup()
            await graph_of(saver, "d").ainvoke({"messages": [("user", "d")]}, CONFIG)
    else:
        with SQLSaver.from_url(place.sync_url) as sync:
            sync.setup()
            graph_of(sync, "d").invoke({"messages": [("user", "d")]}, CONFIG)
    assert place.tables() == {place.default_schema: TABLES}


# -- 4: what is refused ---------------------------------------------------------


BAD_NAMES = ["", "1app", "app-a", "app a", "app.a", 'a"b', "a;drop", "ä", "x" * 64]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused(name: str) -> None:
    url = "postgresql+psycopg://x@nohost.invalid/db"  # refused before connecting
    with pytest.raises(ValueError, match="schema must be a plain identifier"):
        SQLSaver.from_url(url, schema=name)
    with pytest.raises(ValueError, match="schema must be a plain identifier"):
        AsyncSQLSaver.from_url("postgresql+asyncpg://x@nohost.invalid/db", schema=name)
    with pytest.raises(ValueError, match="schema must be a plain identifier"):
        migrate.upgrade(create_engine(url), schema=name)
    done = cli("upgrade", "--url", "sqlite:///x.db", "--schema", name)
    assert done.returncode == 2 and "schema must be a plain identifier" in done.stderr


@pytest.mark.parametrize(
    "url", ["postgresql+psycopg://x@nohost.invalid/db", "mysql+pymysql://x@nohost.invalid/db"]
)
def test_offline_ddl_names_the_schema(url: str) -> None:
    done = cli("upgrade", "--url", url, "--sql", "--schema", A)
    assert done.returncode == 0, done.stderr
    assert f"CREATE TABLE {A}.sqlsaver_checkpoints" in done.stdout
    assert f"CREATE TABLE {A}.{migrate.VERSION_TABLE}" in done.stdout
    assert f"ALTER TABLE {A}.sqlsaver_checkpoints ADD" in done.stdout  # 0004's add_column
    assert "CREATE TABLE sqlsaver_" not in done.stdout


def test_sqlite_refuses_a_schema(tmp_path: Any) -> None:
    """SQLite has no schemas: a file per app instead (not ATTACH, which
    every pooled connection would have to do)."""
    url = f"sqlite:///{tmp_path}/app.db"
    expected = r"SQLite has no schemas.*a database file of its own instead \(sqlite:///app_a.db\)"
    with pytest.raises(ValueError, match=expected):
        SQLSaver.from_url(url, schema=A)
    with pytest.raises(ValueError, match=expected):
        AsyncSQLSaver.from_url(f"sqlite+aiosqlite:///{tmp_path}/app.db", schema=A)
    engine = create_engine(url)
    with pytest.raises(ValueError, match=expected):
        SQLSaver(engine, schema=A)
    with pytest.raises(ValueError, match=expected):
        migrate.upgrade(engine, schema=A)
    engine.dispose()
    assert not (tmp_path / "app.db").exists()
    done = cli("upgrade", "--url", url, "--schema", A)
    assert done.returncode == 2 and "SQLite has no schemas" in done.stderr
    # Nor DDL printed for one (which would name a schema SQLite cannot have).
    printed = cli("upgrade", "--url", url, "--schema", A, "--sql")
    assert printed.returncode == 2 and "SQLite has no schemas" in printed.stderr
    assert "CREATE TABLE" not in printed.stdout


@servers
async def test_a_missing_schema_is_not_created(place: Place, aio: bool) -> None:
    missing = f"nowhere_{uuid.uuid4().hex[:8]}"
    create = "CREATE SCHEMA" if place.backend == "postgres" else "CREATE DATABASE"
    with pytest.raises(SchemaMissingError, match=rf"{create} {missing}"):
        if aio:
            async with AsyncSQLSaver.from_url(place.async_url, schema=missing) as saver:
                await saver.setup()
        else:
            with SQLSaver.from_url(place.sync_url, schema=missing) as sync:
                sync.setup()
    with place.admin() as conn:
        names = conn.execute(text("SELECT schema_name FROM information_schema.schemata"))
        assert missing not in set(names.scalars())


@servers
def test_a_callers_connection_gets_its_options_back(place: Place) -> None:
    engine = create_engine(place.sync_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            own = {None: "elsewhere"}
            conn.execution_options(schema_translate_map=own)
            saver = SQLSaver(conn, schema=place.names[A])
            saver.setup()
            assert saver.get_tuple(CONFIG) is None
            assert conn.get_execution_options()["schema_translate_map"] == own
    finally:
        engine.dispose()


# -- 5: the CLI and copy -------------------------------------------------------


@servers
def test_cli_schema(place: Place) -> None:
    a, b = place.names[A], place.names[B]
    url = place.sync_url
    with SQLSaver.from_url(url, schema=a) as saver:
        with pytest.raises(SchemaNotReadyError) as error:
            saver.get_tuple(CONFIG)
    command = str(error.value).split("`python -m sqlsaver ", 1)[1].split("`", 1)[0]
    assert command.endswith(f"--schema {a}")
    assert cli(*command.split()).returncode == 0  # the suggested command, pasted
    assert place.version(a) == [migrate.HEAD] and b not in place.tables()
    check_a, check_b = (
        cli("check", "--url", url, "--schema", a),
        cli("check", "--url", url, "--schema", b),
    )
    assert (check_a.returncode, check_b.returncode) == (0, 1)
    current = cli("current", "--url", url, "--schema", a)
    assert current.stdout.startswith(migrate.HEAD)
    # Expired threads are swept in the schema given, and only there.
    ttl = {"default_ttl": 1, "sweep_limit": 10}
    with SQLSaver.from_url(url, schema=a, ttl=ttl, clock=lambda: 0.0) as in_a:
        graph_of(in_a, A).invoke({"messages": [("user", A)]}, CONFIG)
    assert cli("sweep", "--url", url, "--schema", b).returncode == 2  # none there
    swept = cli("sweep", "--url", url, "--schema", a)
    assert "swept 1 expired threads" in swept.stdout, swept.stderr
    with SQLSaver.from_url(url, schema=a) as in_a:
        assert in_a.get_tuple(CONFIG) is None
    downgraded = cli("downgrade", "--url", url, "--schema", a, "--revision", "0003")
    assert downgraded.returncode == 0, downgraded.stderr
    assert place.version(a) == ["0003"] and b not in place.tables()
    # Alembic's own command line, as alembic.ini runs it: -x schema=...
    done = alembic_cli("-x", f"schema={b}", "upgrade", "0002", url=url)
    assert done.returncode == 0, done.stderr
    assert place.version(b) == ["0002"] and place.version(a) == ["0003"]
    assert place.default_schema not in place.tables()


@servers
def test_copy_into_a_schema(place: Place, tmp_path: Any) -> None:
    source = f"sqlite:///{tmp_path}/old.db"
    with SQLSaver.from_url(source) as old:
        old.setup()
        graph_of(old, "old").invoke({"messages": [("user", "old")]}, CONFIG)
    report = copy_threads(source, place.sync_url, target_schema=place.names[B])
    assert report.threads == 1 and report.verified == 1
    with SQLSaver.from_url(place.sync_url, schema=place.names[B]) as new:
        assert said(graph_of(new, "new").get_state(CONFIG)) == ["old", "from old"]
    assert set(place.tables()) == {place.names[B]}
    # And from there, by the CLI, into the other schema.
    url, a, b = place.sync_url, place.names[A], place.names[B]
    done = cli("copy", "--from", url, "--from-schema", b, "--to", url, "--to-schema", a)
    assert done.returncode == 0, done.stderr
    assert "copied 1 thread from sqlsaver" in done.stdout
    with SQLSaver.from_url(url, schema=a) as other:
        assert said(graph_of(other, "other").get_state(CONFIG)) == ["old", "from old"]
