"""sqlsaver's schema in deployment, on real SQLite, PostgreSQL and MySQL/MariaDB.

Most tests run in a database of their own (`fresh`: a new database on the
backend's server, or a new SQLite file), dropped afterwards. Covered:

1. base -> head -> base -> head with `sqlsaver.migrate`: at head Alembic's
   autogenerate finds no difference from `sqlsaver.models` (and does at every
   older revision); at base only the empty version table is left.
2. `migrate.REVISIONS` / `HEAD` are the scripts on disk.
3. Downgrading to 0001 and upgrading again keep every checkpoint, write and
   namespace (stored by a saver and by a real LangGraph graph), with the
   default serializer and a saver's own; savers refuse a database that is
   behind (`SchemaNotReadyError`, naming the upgrade command) or ahead
   (`SchemaTooNewError`, and `setup()` changes nothing), sync and async.
4. `setup()` at head is one SELECT of the version table, without Alembic.
5. The wheel, installed in a clean virtual environment, sets up, migrates
   and checks a database from outside the checkout.
6. Six processes calling `setup()` at once on an empty database.
7. sqlsaver beside the official LangGraph savers' tables and an app's own
   `alembic_version`: those are left untouched.
8. `migrate.include_object` keeps sqlsaver's tables out of an app's
   autogenerate.
9. The CLI: in test_cli.py.
10. The repo's ``alembic.ini``: upgrade, current, history, check, downgrade.
"""

from __future__ import annotations

import operator
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, TypedDict, TypeVar

import alembic.command
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import Backend
from helpers import server_database
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from sqlalchemy import (
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    inspect,
    make_url,
    select,
    text,
)
from sqlalchemy.pool import NullPool

from sqlsaver import AsyncSQLSaver, SchemaNotReadyError, SchemaTooNewError, SQLSaver, migrate
from sqlsaver.models import Base

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REVISIONS, HEAD, VERSION_TABLE = migrate.REVISIONS, migrate.HEAD, migrate.VERSION_TABLE
SQLSAVER_TABLES = set(Base.metadata.tables) | {VERSION_TABLE}
UPGRADE_COMMAND = "python -m sqlsaver upgrade --url"
T = TypeVar("T")


# -- a database of the test's own ----------------------------------------------


def _on_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture
def fresh(backend: Backend, tmp_path: Path) -> Iterator[Backend]:
    """An empty database on the backend's server, dropped afterwards."""
    if backend.name == "sqlite":
        path = tmp_path / "fresh.db"
        yield Backend("sqlite", f"sqlite:///{path}", f"sqlite+aiosqlite:///{path}")
        return
    with server_database(backend.sync_url, "sqlsaver_mig") as url:
        name = make_url(url).database
        assert name is not None
        yield Backend(backend.name, url, _on_database(backend.async_url, name))


@contextmanager
def engine_on(url: str) -> Iterator[Engine]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


# -- looking at a database -------------------------------------------------------


def schema_diff(engine: Engine) -> list[Any]:
    """Alembic autogenerate's differences between the database and the models,
    compared as migrations/env.py compares them."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "target_metadata": Base.metadata,
                "include_name": lambda name, type_, _parent: (
                    type_ != "table" or name.startswith("sqlsaver_")
                ),
            },
        )
        return compare_metadata(context, Base.metadata)


def schema(engine: Engine, sqlsaver: bool = True) -> dict[str, Any]:
    """Tables (sqlsaver's, or everyone else's) with their columns and indexes."""
    found = inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"])) for c in found.get_columns(table)],
            sorted(str(i["name"]) for i in found.get_indexes(table)),
        )
        for table in found.get_table_names()
        if table.startswith("sqlsaver_") == sqlsaver
    }


def version_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]


def contents(engine: Engine, sqlsaver: bool = False) -> dict[str, list[Any]]:
    """Every row of every table (not sqlsaver's, by default), in a stable order."""
    metadata = MetaData()
    with engine.connect() as conn:
        return {
            name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
            for name in schema(engine, sqlsaver)
            for table in [Table(name, metadata, autoload_with=conn)]
        }


def run(
    *args: Any, cwd: Path | str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m sqlsaver ...``"""
    return run(sys.executable, "-m", "sqlsaver", *args)


def at_once(*calls: Callable[[], T]) -> list[T]:
    """Independent commands in parallel: each subprocess spends ~1 s importing."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def config(thread: str, ns: str = "") -> dict[str, Any]:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ns}}


# -- 1, 2: the revisions -----------------------------------------------------------


def test_base_head_base_head_matches_models(fresh: Backend) -> None:
    with engine_on(fresh.sync_url) as engine:
        assert migrate.status(engine) == "missing"
        at: dict[str, Any] = {}
        for revision in REVISIONS:
            migrate.upgrade(engine, revision)
            assert migrate.current(engine) == revision
            at[revision] = schema(engine)
        # Each downgrade step gives back the schema of the revision before.
        for revision in reversed(REVISIONS[:-1]):
            migrate.downgrade(engine, revision)
            assert (migrate.current(engine), schema(engine)) == (revision, at[revision])
            assert schema_diff(engine) != []  # the comparison does see what is missing
        for _ in range(2):
            migrate.upgrade(engine)
            assert migrate.current(engine) == HEAD and migrate.status(engine) == "current"
            assert set(schema(engine)) == SQLSAVER_TABLES and schema(engine) == at[HEAD]
            assert schema_diff(engine) == []
            migrate.downgrade(engine, "base")
            # Alembic leaves its version table, empty, at base.
            assert set(schema(engine)) == {VERSION_TABLE}
            assert version_rows(engine) == []
            assert migrate.current(engine) is None and migrate.status(engine) == "missing"
        migrate.upgrade(engine)
        assert schema_diff(engine) == [] and version_rows(engine) == [(HEAD,)]


def test_revisions_are_the_scripts_on_disk() -> None:
    assert list(migrate.revisions()) == list(REVISIONS)
    assert (
        HEAD
        == REVISIONS[-1]
        == ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    )
    scripts = sorted(p.name for p in (REPO / "migrations" / "versions").glob("[0-9]*.py"))
    assert [name.split("_", 1)[0] for name in scripts] == list(REVISIONS)


# -- 3: upgrading with data in place; behind and ahead ------------------------------


class State(TypedDict):
    items: Annotated[list[str], operator.add]


def small_graph(saver: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node("a", lambda state: {"items": ["a"]})
    builder.add_node("b", lambda state: {"items": ["b"]})
    builder.add_edge(START, "a")
    builder.add_edge("a", "b")
    builder.add_edge("b", END)
    return builder.compile(checkpointer=saver)


NAMESPACES = [("t1", ""), ("t1", "child:1"), ("t2", ""), ("graph", "")]


def everything(saver: SQLSaver) -> dict[Any, Any]:
    """What a saver returns for the stored threads: latest, lists, every tuple."""
    found: dict[Any, Any] = {"all": list(saver.list(None))}
    for thread, ns in NAMESPACES:
        listed = list(saver.list(config(thread, ns)))
        found[thread, ns] = (saver.get_tuple(config(thread, ns)), listed)
        for item in listed:
            found[item.config["configurable"]["checkpoint_id"]] = saver.get_tuple(item.config)
    graph = small_graph(saver)
    found["graph"] = [
        (s.config, s.values, s.next, s.metadata, s.parent_config)
        for s in graph.get_state_history(config("graph"))
    ]
    return found


class Reversed(JsonPlusSerializer):
    """A serializer of its own kind (as an encrypting one is): LangGraph's
    default one cannot read what it writes."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = super().dumps_typed(obj)
        return f"reversed+{type_}", data[::-1]

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, blob = data
        if not type_.startswith("reversed+"):
            raise ValueError(f"not reversed: {type_}")
        return super().loads_typed((type_.removeprefix("reversed+"), blob[::-1]))


def store_everything(saver: SQLSaver) -> None:
    """Checkpoints, writes and namespaces from a saver and a real graph."""
    for thread, ns in NAMESPACES[:3]:
        saved, version = config(thread, ns), None
        for step in range(3):
            checkpoint = empty_checkpoint()
            version = saver.get_next_version(version, None)
            checkpoint["channel_values"] = {"x": [thread, ns, step]}
            checkpoint["channel_versions"] = {"x": version}
            metadata = {"source": "loop", "step": step, "run_id": f"run-{step}"}
            saved = saver.put(saved, checkpoint, metadata, {"x": version})
            saver.put_writes(saved, [("x", step), ("y", {"n": step})], f"task-{step}", "p")
    graph = small_graph(saver)
    graph.invoke({"items": ["one"]}, config("graph"))
    graph.invoke({"items": ["two"]}, config("graph"))


@pytest.mark.parametrize("serde", [None, Reversed()], ids=["default serde", "own serde"])
def test_downgrade_to_0001_and_upgrade_again_keep_everything(
    fresh: Backend, serde: Reversed | None
) -> None:
    """Revision 0004 moved channel versions out of the checkpoint bytes:
    a downgrade puts them back (with the saver's serializer) so that an
    older sqlsaver reads every checkpoint whole, and sqlsaver reads rows
    in that older form after upgrading again."""
    with SQLSaver.from_url(fresh.sync_url, serde=serde) as saver:
        saver.setup()
        store_everything(saver)
        before = everything(saver)
    assert len(before["all"]) == 9 + len(before["graph"])
    assert before["graph"][0][1] == {"items": ["one", "a", "b", "two", "a", "b"]}

    with engine_on(fresh.sync_url) as engine:
        if serde is not None:  # the default one cannot read these: nothing changes
            with pytest.raises(RuntimeError, match=r"serde=saver\.serde"):
                migrate.downgrade(engine, REVISIONS[0])
            assert migrate.current(engine) == HEAD
        migrate.downgrade(engine, REVISIONS[0], serde=serde)
        assert migrate.current(engine) == REVISIONS[0]
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM sqlsaver_checkpoints")).mappings().all()
        assert len(rows) == len(before["all"]) and "channel_versions" not in rows[0]
        decode = serde or JsonPlusSerializer()
        for row in rows:
            stored = decode.loads_typed((row["checkpoint_type"], bytes(row["checkpoint"])))
            assert isinstance(stored["channel_versions"], dict)

    with SQLSaver.from_url(fresh.sync_url, serde=serde) as saver:
        saver.setup()
        with engine_on(fresh.sync_url) as engine:
            assert migrate.current(engine) == HEAD and schema_diff(engine) == []
        assert everything(saver) == before
        small_graph(saver).invoke({"items": ["three"]}, config("graph"))
        assert saver.get_tuple(config("graph")).checkpoint["channel_values"]["items"][-3:] == [
            "three",
            "a",
            "b",
        ]


def test_offline_downgrade_below_0004_is_refused() -> None:
    with pytest.raises(RuntimeError, match="re-encodes stored checkpoints"):
        config_ = migrate.alembic_config(url="sqlite:///offline.db")
        alembic.command.downgrade(config_, "0004:0003", sql=True)


async def test_savers_refuse_a_database_behind_or_missing(fresh: Backend) -> None:
    for revision in (None, REVISIONS[0]):
        if revision is not None:
            with engine_on(fresh.sync_url) as engine:
                migrate.upgrade(engine, revision)
        with SQLSaver.from_url(fresh.sync_url) as saver:
            with pytest.raises(SchemaNotReadyError) as sync_error:
                saver.get_tuple(config("t"))
        async with AsyncSQLSaver.from_url(fresh.async_url) as asaver:
            with pytest.raises(SchemaNotReadyError) as async_error:
                await asaver.aget_tuple(config("t"))
        for error in (sync_error, async_error):
            assert UPGRADE_COMMAND in str(error.value)
            assert revision is None or f"at revision {revision}" in str(error.value)


async def test_savers_refuse_a_database_ahead(fresh: Backend) -> None:
    with engine_on(fresh.sync_url) as engine:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
        assert migrate.status(engine) == "ahead"
        before = (schema(engine), version_rows(engine), contents(engine, sqlsaver=True))
        with SQLSaver.from_url(fresh.sync_url) as saver:
            with pytest.raises(SchemaTooNewError, match="9999"):
                saver.get_tuple(config("t"))
            with pytest.raises(SchemaTooNewError, match="newer sqlsaver"):
                saver.setup()
        async with AsyncSQLSaver.from_url(fresh.async_url) as asaver:
            with pytest.raises(SchemaTooNewError):
                await asaver.aget_tuple(config("t"))
            with pytest.raises(SchemaTooNewError):
                await asaver.setup()
        assert (schema(engine), version_rows(engine), contents(engine, sqlsaver=True)) == before


# -- 4: setup() at head is cheap -------------------------------------------------


class AlembicLoaded(Exception):
    pass


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement any engine sends to a cursor, savepoints included."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(re.sub(r"sa_savepoint_\d+", "sp", " ".join(statement.split())))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


async def test_setup_at_head_is_one_select_without_alembic(
    fresh: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def alembic_loaded(*args: Any, **kwargs: Any) -> None:
        raise AlembicLoaded

    @contextmanager
    def no_alembic() -> Iterator[None]:
        # Spies on Alembic (not on the database layer): running a command, or
        # loading the environment (migrations/env.py) by any route, fails.
        with monkeypatch.context() as patch:
            patch.setattr(alembic.command, "upgrade", alembic_loaded)
            patch.setattr(ScriptDirectory, "run_env", alembic_loaded)
            yield

    with engine_on(fresh.sync_url) as engine:
        migrate.upgrade(engine, REVISIONS[-2])
    with no_alembic(), SQLSaver.from_url(fresh.sync_url) as saver:
        with pytest.raises(AlembicLoaded):  # the spies see a real migration
            saver.setup()
    with SQLSaver.from_url(fresh.sync_url) as saver:
        saver.setup()

    # The saver's engines are AUTOCOMMIT: it begins and commits the
    # transaction itself (BEGIN IMMEDIATE on SQLite, the writer's lock up
    # front). The version read runs in a SAVEPOINT (a missing table must not
    # abort a caller's PostgreSQL transaction). Nothing else: no lock, no
    # Alembic.
    begin = "BEGIN IMMEDIATE" if fresh.name == "sqlite" else "BEGIN"
    expected = [
        begin,
        "SAVEPOINT sp",
        f"SELECT {VERSION_TABLE}.version_num FROM {VERSION_TABLE}",
        "RELEASE SAVEPOINT sp",
        "COMMIT",
    ]
    with no_alembic(), SQLSaver.from_url(fresh.sync_url) as saver:
        with statements() as seen:
            saver.setup()
        assert seen == expected
        with statements() as seen:  # and the first read checks no more
            saver.get_tuple(config("t"))
        assert seen and not [s for s in seen if VERSION_TABLE in s]
    with no_alembic():
        async with AsyncSQLSaver.from_url(fresh.async_url) as asaver:
            with statements() as seen:
                await asaver.setup()
    selects = [s for s in seen if not re.match(r"(BEGIN|COMMIT|SAVEPOINT|RELEASE SAVEPOINT)\b", s)]
    assert selects == [expected[2]]


# -- 5: the wheel, installed ------------------------------------------------------


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a clean virtual environment with sqlsaver's wheel (and
    its dependencies from the index) installed: not editable, no checkout."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so the checkout's build/ (stale files, and shared with
    # other runs) neither goes into the wheel nor gets written to.
    source = root / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            "build",
            "dist",
            "*.egg-info",
            ".*venv*",
            ".nox",
            "__pycache__",
            ".*_cache",
            "*.db",
        ),
    )
    built = run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", root / "dist", source
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (root / "dist").glob("sqlsaver-*.whl")
    # A venv without pip of its own, filled by this pip (`--python`): no
    # ensurepip, and no byte-compiling of every dependency (time).
    made = run(sys.executable, "-m", "venv", "--without-pip", root / "venv")
    assert made.returncode == 0, made.stderr
    python = root / "venv" / "bin" / "python"
    pip = run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile", wheel
    )
    assert pip.returncode == 0, pip.stderr
    return python


INSTALLED_SCRIPT = """
import sqlsaver, sqlsaver.migrate
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlsaver import SQLSaver
print(sqlsaver.__file__)
print(sqlsaver.migrate.migrations_dir())
with SQLSaver.from_url("sqlite:///x.db") as s:
    s.setup()
    saved = s.put({"configurable": {"thread_id": "t", "checkpoint_ns": ""}},
                  empty_checkpoint(), {"step": 7}, {})
    print("step", s.get_tuple(saved).metadata["step"])
"""


def test_wheel_works_installed_in_a_clean_venv(installed: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def installed_run(*args: Any) -> subprocess.CompletedProcess[str]:
        return run(*args, cwd=tmp_path, env=env)

    site = installed.parent.parent / "lib"
    script = installed_run(installed, "-c", INSTALLED_SCRIPT)
    assert script.returncode == 0, script.stderr
    module, migrations_dir, step = script.stdout.splitlines()
    assert Path(module).is_relative_to(site) and Path(migrations_dir).is_relative_to(site)
    assert not Path(module).is_relative_to(REPO) and step == "step 7"

    upgraded = installed_run(installed, "-m", "sqlsaver", "upgrade", "--url", "sqlite:///y.db")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"Running upgrade {REVISIONS[-2]} -> {HEAD}" in upgraded.stderr
    assert upgraded.stdout.strip() == f"sqlsaver tables: {HEAD}"
    for checked in at_once(  # and the console script, on the database setup() made
        lambda: installed_run(installed, "-m", "sqlsaver", "check", "--url", "sqlite:///y.db"),
        lambda: installed_run(installed.parent / "sqlsaver", "check", "--url", "sqlite:///x.db"),
    ):
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.strip() == f"{HEAD} (at head {HEAD})"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == ["x.db", "y.db"]


# -- 6: many processes set up an empty database at once ---------------------------

WORKER = """
import pathlib, sys, time
import sqlalchemy, sqlsaver.migrate
from sqlsaver import SQLSaver
url, gate, me = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
# Warm up (imports, scripts, driver) so that the setup() calls overlap.
sqlsaver.migrate.revisions()
sqlalchemy.create_engine(url).connect().close()
(gate / ("ready-" + me)).touch()
while not (gate / "go").exists():
    time.sleep(0.005)
with SQLSaver.from_url(url) as saver:
    saver.setup()
print("ok")
"""


def test_concurrent_setup_on_an_empty_database(fresh: Backend, tmp_path: Path) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, fresh.sync_url, str(tmp_path), str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    (tmp_path / "go").touch()  # all imported: setup() starts in all at once
    outcomes = [(w.wait(timeout=300), *w.communicate()) for w in workers]
    assert [o[:2] for o in outcomes] == [(0, "ok\n")] * 6, [o[2][-2000:] for o in outcomes]
    with engine_on(fresh.sync_url) as engine:
        assert set(schema(engine)) == SQLSAVER_TABLES
        assert version_rows(engine) == [(HEAD,)]
        assert schema_diff(engine) == []


@pytest.mark.parametrize("how", ["setup", "upgrade"])
def test_migrating_on_an_autocommit_engine_is_one_transaction(fresh: Backend, how: str) -> None:
    """An AUTOCOMMIT engine (the `from_url` and CLI engines on PostgreSQL)
    has no transaction of its own to migrate in: `setup()` and
    `migrate.upgrade` open one, so that the DDL is all or nothing and
    PostgreSQL's migration lock (transaction-scoped) is held to the end.
    (MySQL commits each DDL statement; its migration lock is the
    session's.)"""
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements.append(" ".join(sql.split()).upper())

    with engine_on(fresh.sync_url) as engine:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        event.listen(engine, "before_cursor_execute", seen)
        if how == "setup":
            SQLSaver(autocommit).setup()
        else:
            migrate.upgrade(autocommit)
        event.remove(engine, "before_cursor_execute", seen)
        assert set(schema(engine)) == SQLSAVER_TABLES and version_rows(engine) == [(HEAD,)]
    ddl = [i for i, sql in enumerate(statements) if sql.startswith("CREATE TABLE")]
    assert len(ddl) == len(SQLSAVER_TABLES), statements
    if fresh.name == "mysql":
        lock = [i for i, sql in enumerate(statements) if "GET_LOCK" in sql]
        assert lock and lock[0] < ddl[0], statements
        return
    begins = [i for i, sql in enumerate(statements) if sql.startswith("BEGIN")]
    commits = [i for i, sql in enumerate(statements) if sql == "COMMIT"]
    assert begins and begins[0] < ddl[0] and commits and commits[-1] > ddl[-1], statements
    if fresh.name == "postgres":
        lock = [i for i, sql in enumerate(statements) if "PG_ADVISORY_XACT_LOCK" in sql]
        assert lock and begins[0] < lock[0] < ddl[0], statements


def test_sqlite_setup_waits_for_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process setting up, or an app writing
    other.execute("CREATE TABLE app_items (id INTEGER)")
    done = threading.Timer(1.0, other.execute, ["COMMIT"])
    done.start()
    try:
        with SQLSaver.from_url(f"sqlite:///{path}") as saver:
            saver.setup()  # should wait for the writer (30 s busy timeout), then migrate
    finally:
        done.join()
        other.close()
    with engine_on(f"sqlite:///{path}") as engine:
        assert migrate.current(engine) == HEAD


# -- 7: beside the official savers and an app's own Alembic -------------------------


def test_coexists_with_official_tables_and_app_alembic(fresh: Backend) -> None:
    with engine_on(fresh.sync_url) as engine:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
            conn.execute(text("INSERT INTO alembic_version VALUES ('app_rev_1')"))
            conn.execute(text("CREATE TABLE app_items (id INTEGER PRIMARY KEY, name VARCHAR(50))"))
            conn.execute(text("INSERT INTO app_items VALUES (1, 'kept')"))
        official_tables: set[str] = set()
        if fresh.name == "postgres":
            from langgraph.checkpoint.postgres import PostgresSaver as Official

            conninfo = make_url(fresh.sync_url).set(drivername="postgresql")
            official_url = conninfo.render_as_string(hide_password=False)
            official_tables = {"checkpoints", "checkpoint_blobs", "checkpoint_writes"}
        elif fresh.name == "sqlite":
            from langgraph.checkpoint.sqlite import SqliteSaver as Official

            official_url = str(make_url(fresh.sync_url).database)
            official_tables = {"checkpoints", "writes"}
        if official_tables:
            with Official.from_conn_string(official_url) as official:
                official.setup()
                checkpoint = empty_checkpoint()
                checkpoint["channel_values"] = {"x": 1}
                checkpoint["channel_versions"] = {"x": 1}
                saved = official.put(config("official"), checkpoint, {"step": 1}, {"x": 1})
                official.put_writes(saved, [("x", 2)], "task")
        before = (schema(engine, sqlsaver=False), contents(engine))
        assert official_tables <= set(before[0]) and before[1]["alembic_version"] == [
            ("app_rev_1",)
        ]
        assert not schema(engine)

        with SQLSaver.from_url(fresh.sync_url) as saver:
            saver.setup()
            saved = saver.put(config("official"), empty_checkpoint(), {"step": 1}, {})
            saver.put_writes(saved, [("x", 3)], "task")
            assert saver.get_tuple(config("official")).pending_writes[0][1:] == ("x", 3)
        assert set(schema(engine)) == SQLSAVER_TABLES and version_rows(engine) == [(HEAD,)]
        assert (schema(engine, sqlsaver=False), contents(engine)) == before
        migrate.downgrade(engine, "base")
        assert (schema(engine, sqlsaver=False), contents(engine)) == before
    if official_tables:
        with Official.from_conn_string(official_url) as official:
            assert official.get_tuple(config("official")).pending_writes[0][1:] == ("x", 2)


# -- 8: an app's autogenerate leaves sqlsaver's tables alone --------------------------


def test_include_object_excludes_only_sqlsaver() -> None:
    app = MetaData()
    items = Table(
        "app_items", app, Column("id", Integer, primary_key=True), Column("run_id", String(9))
    )
    app_index = Index("ix_app_items_run_id", items.c.run_id)
    for reflected in (False, True):
        for table in Base.metadata.tables.values():
            assert not migrate.include_object(table, table.name, "table", reflected, None)
            for index in table.indexes:
                assert not migrate.include_object(index, index.name, "index", reflected, None)
            column = next(iter(table.columns))
            assert not migrate.include_object(column, column.name, "column", reflected, None)
        version = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32)))
        assert not migrate.include_object(version, VERSION_TABLE, "table", reflected, None)
        assert migrate.include_object(items, "app_items", "table", reflected, None)
        assert migrate.include_object(app_index, app_index.name, "index", reflected, None)
        assert migrate.include_object(items.c.id, "id", "column", reflected, None)
    assert sum(len(t.indexes) for t in Base.metadata.tables.values()) >= 2


def test_app_autogenerate_with_include_object_drops_nothing_of_sqlsaver(fresh: Backend) -> None:
    app = MetaData()
    Table("app_items", app, Column("id", Integer, primary_key=True), Column("name", String(50)))
    Table("app_new", app, Column("id", Integer, primary_key=True))
    with engine_on(fresh.sync_url) as engine:
        migrate.upgrade(engine)
        app.tables["app_items"].create(engine)

        def autogenerate(**hook: Any) -> set[tuple[str, str]]:
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"target_metadata": app, **hook})
                return {(d[0], d[1].name) for d in compare_metadata(context, app)}

        assert autogenerate(include_object=migrate.include_object) == {("add_table", "app_new")}
        # Without it: every sqlsaver table, and each of their indexes, dropped.
        indexes = {i.name for table in Base.metadata.tables.values() for i in table.indexes}
        assert autogenerate() == {("add_table", "app_new")} | {
            ("remove_table", name) for name in SQLSAVER_TABLES
        } | {("remove_index", name) for name in indexes}


# -- 10: the repo's alembic.ini ------------------------------------------------------------


def alembic_cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SQLSAVER_URL"}
    if url is not None:
        env["SQLSAVER_URL"] = url
    return run(BIN / "alembic", "-c", "alembic.ini", *args, cwd=REPO, env=env)


def test_alembic_ini(fresh: Backend) -> None:
    def ok(done: subprocess.CompletedProcess[str]) -> str:
        assert done.returncode == 0, (done.stdout, done.stderr)
        return done.stdout

    url = fresh.sync_url
    with engine_on(url) as engine:
        ok(alembic_cli("upgrade", "head", url=url))
        assert version_rows(engine) == [(HEAD,)] and schema_diff(engine) == []
        current, history, check = at_once(
            *(
                lambda command=command: alembic_cli(command, url=url)
                for command in ("current", "history", "check")
            )
        )
        assert ok(current).split() == [HEAD, "(head)"]
        assert [line.split(",")[0] for line in ok(history).splitlines()] == [
            f"{a} -> {b} (sqlsaver)" + (" (head)" if b == HEAD else "")
            for a, b in reversed(list(pairwise(["<base>", *REVISIONS])))
        ]
        assert "No new upgrade operations detected" in ok(check)
        ok(alembic_cli("downgrade", "base", url=url))
        assert set(schema(engine)) == {VERSION_TABLE} and version_rows(engine) == []
        ok(alembic_cli("-x", f"url={fresh.async_url}", "upgrade", "head"))
        assert ok(alembic_cli("-x", f"url={url}", "current")).split() == [HEAD, "(head)"]
        assert version_rows(engine) == [(HEAD,)] and schema_diff(engine) == []


def test_alembic_ini_reports_progress(tmp_path: Path) -> None:
    done = alembic_cli("-x", f"url=sqlite:///{tmp_path / 'p.db'}", "upgrade", "head")
    assert done.returncode == 0, done.stderr
    assert f"Running upgrade  -> {REVISIONS[0]}" in done.stderr
