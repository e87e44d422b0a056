"""What a saver is given, and how its transactions behave, on every backend.

- ``SQLSaver(engine)`` / ``AsyncSQLSaver(async_engine)``: every operation is
  its own committed transaction, and the saver never disposes of an engine it
  did not create (only ``from_url`` engines are disposed).
- ``SQLSaver(connection | Session)`` / ``AsyncSQLSaver(async_connection |
  AsyncSession)``: the saver joins the caller's transaction and never commits
  it. The caller's commit keeps checkpoints together with the caller's own
  rows; its rollback discards both.
- A write that fails half-way (a database trigger refuses the checkpoint row
  after the blob row went in) leaves the caller's transaction usable and
  without partial rows (SAVEPOINT), and on SQLite the SAVEPOINT of a first
  statement does not commit anything behind the caller's back. AUTOCOMMIT
  callers (Connection, Session, Engine) get whole-or-nothing writes too.
- ``AsyncSQLSaver``'s sync methods work from other threads and raise
  ``asyncio.InvalidStateError`` on its event loop; ``SQLSaver``'s async
  methods work.
- Concurrent writes on one saver (engine or one shared connection; threads
  or ``asyncio.gather``) all land; two ``from_url`` savers on one database
  (two pools: on SQLite, two writers of one file) do not fail with
  "database is locked".
- Wrong bind types raise ``TypeError`` naming the right class, and
  ``from_url`` savers return every pooled connection after a burst of work.

Checkpoints are checked from another connection of the test's own engine,
which sees committed rows only.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from conftest import caller_engine_args
from helpers import SESSION_ID
from langgraph.checkpoint.base import empty_checkpoint
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool
from sqlalchemy.util import greenlet_spawn

from sqlsaver import AsyncSQLSaver, SQLSaver, engines
from sqlsaver.execution.runner import ATTEMPTS, AsyncRunner
from sqlsaver.models import blobs, checkpoints, writes

# A table of the application's own, written in the same transactions.
app_rows = Table("binds_app_rows", MetaData(), Column("thread_id", String(200), primary_key=True))

# Checkpoint rows of threads with this prefix are refused by a trigger.
REFUSED = "refused-"


# -- helpers -------------------------------------------------------------------


def runner_of(saver: SQLSaver | AsyncSQLSaver) -> Any:
    """The sync runner of a saver (under an async one's `AsyncRunner`)."""
    runner = saver._runner
    return runner.runner if isinstance(runner, AsyncRunner) else runner


def kept_open(saver: SQLSaver | AsyncSQLSaver) -> int:
    """How many connections a saver keeps open between operations (`from_url`
    savers, `kept.keeps_connections`)."""
    kept = runner_of(saver)._kept
    return 0 if kept is None else len(kept._idle)


def config_of(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


def put_args(
    thread_id: str, value: Any = "v", parent_id: str | None = None, run_id: str | None = None
) -> tuple[Any, ...]:
    """``put``'s arguments for a new checkpoint storing ``value`` in channel
    "x" (kept in the checkpoint row when small) and ``[value]`` in channel
    "log" (a list: one blob row)."""
    checkpoint = empty_checkpoint()
    version = f"{1:032}.{uuid.uuid4().hex[:16]}"
    checkpoint["channel_values"] = {"x": value, "log": [value]}
    checkpoint["channel_versions"] = {"x": version, "log": version}
    metadata = {"source": "loop", "step": 0, **({"run_id": run_id} if run_id else {})}
    new_versions = dict(checkpoint["channel_versions"])
    return config_of(thread_id, parent_id), checkpoint, metadata, new_versions


def counts(engine: Engine, thread_id: str) -> dict[str, int]:
    """Committed rows of ``thread_id``, seen from a connection of its own."""
    with engine.connect() as conn:
        return {
            table.name.removeprefix("sqlsaver_"): conn.scalar(
                select(func.count()).select_from(table).where(table.c.thread_id == thread_id)
            )
            for table in (checkpoints, blobs, writes, app_rows)
        }


def rows(checkpoints: int = 0, blobs: int = 0, writes: int = 0, app: int = 0) -> dict[str, int]:
    return {"checkpoints": checkpoints, "blobs": blobs, "writes": writes, "binds_app_rows": app}


NOTHING = rows()


@contextmanager
def refusing_checkpoints(engine: Engine) -> Iterator[None]:
    """A trigger that refuses checkpoint rows of ``REFUSED`` threads: their
    ``put`` stores the blob row, then fails on the checkpoint row."""
    name = engine.dialect.name
    if name == "sqlite":
        create = [
            "CREATE TRIGGER binds_refuse BEFORE INSERT ON sqlsaver_checkpoints "
            f"WHEN NEW.thread_id LIKE '{REFUSED}%' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
        drop = ["DROP TRIGGER IF EXISTS binds_refuse"]
    elif name == "postgresql":
        create = [
            "CREATE OR REPLACE FUNCTION binds_refuse() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$",
            "CREATE TRIGGER binds_refuse BEFORE INSERT ON sqlsaver_checkpoints FOR EACH ROW "
            f"WHEN (NEW.thread_id LIKE '{REFUSED}%') EXECUTE FUNCTION binds_refuse()",
        ]
        drop = [
            "DROP TRIGGER IF EXISTS binds_refuse ON sqlsaver_checkpoints",
            "DROP FUNCTION IF EXISTS binds_refuse()",
        ]
    else:
        create = [
            "CREATE TRIGGER binds_refuse BEFORE INSERT ON sqlsaver_checkpoints FOR EACH ROW "
            f"BEGIN IF NEW.thread_id LIKE '{REFUSED}%' THEN "
            "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'; END IF; END"
        ]
        drop = ["DROP TRIGGER IF EXISTS binds_refuse"]
    with engine.begin() as conn:
        for statement in drop + create:
            conn.execute(text(statement))
    try:
        yield
    finally:
        with engine.begin() as conn:
            for statement in drop:
                conn.execute(text(statement))


@pytest.fixture
def app_engine(backend: Any) -> Iterator[Engine]:
    """The application's own engine (plain create_engine, not sqlsaver's)."""
    engine = create_engine(backend.sync_url, **caller_engine_args(backend.sync_url))
    app_rows.create(engine, checkfirst=True)
    yield engine
    engine.dispose()


@pytest.fixture
async def async_app_engine(backend: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(backend.async_url, **caller_engine_args(backend.async_url))
    yield engine
    await engine.dispose()


@contextmanager
def caller_transaction(engine: Engine, kind: str) -> Iterator[Any]:
    """An open Connection or Session of the application's."""
    if kind == "connection":
        with engine.connect() as conn:
            yield conn
    else:
        with Session(engine) as session:
            yield session


# -- 1. an Engine: one committed transaction per operation ----------------------


def test_engine_commits_each_operation(app_engine: Engine, thread_id: str) -> None:
    saver = SQLSaver(app_engine)
    config = saver.put(*put_args(thread_id))
    assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1)
    saver.put_writes(config, [("x", 1)], "task")
    assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1, writes=1)
    saver.delete_thread(thread_id)
    assert counts(app_engine, thread_id) == NOTHING


async def test_engine_failed_write_rolls_back(
    app_engine: Engine, async_app_engine: AsyncEngine, thread_id: str
) -> None:
    refused = REFUSED + thread_id
    with refusing_checkpoints(app_engine):
        with pytest.raises(DBAPIError, match="refused"):
            SQLSaver(app_engine).put(*put_args(refused))
        with pytest.raises(DBAPIError, match="refused"):
            await AsyncSQLSaver(async_app_engine).aput(*put_args(refused))
    assert counts(app_engine, refused) == NOTHING  # the blob row went with it


def test_saver_never_disposes_an_engine_it_was_given(app_engine: Engine, thread_id: str) -> None:
    pool = app_engine.pool
    with SQLSaver(app_engine) as saver:
        saver.put(*put_args(thread_id))
    saver.close()
    # Engine.dispose() would have replaced the pool and closed its connections.
    assert app_engine.pool is pool and pool.checkedin() >= 1
    assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1)


def test_from_url_saver_disposes_its_own_engine(backend: Any) -> None:
    saver = SQLSaver.from_url(backend.sync_url)
    saver.get_tuple(config_of("no-such-thread"))
    pool = saver._owned_engine.pool
    # The connection stays with the saver between operations
    # (`kept.keeps_connections`).
    assert (pool.checkedout(), pool.checkedin()) == (1, 0)
    checkins: list[object] = []
    event.listen(pool, "checkin", lambda *args: checkins.append(args))
    saver.close()
    assert saver._owned_engine.pool is not pool
    assert len(checkins) == 1  # the kept one, handed back


async def test_async_engine_commits_each_operation_and_is_not_disposed(
    app_engine: Engine, async_app_engine: AsyncEngine, thread_id: str
) -> None:
    pool = async_app_engine.sync_engine.pool
    async with AsyncSQLSaver(async_app_engine) as saver:
        config = await saver.aput(*put_args(thread_id))
        assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1)
        await saver.aput_writes(config, [("x", 1)], "task")
        assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1, writes=1)
    await saver.aclose()
    assert async_app_engine.sync_engine.pool is pool and pool.checkedin() >= 1
    assert (await AsyncSQLSaver(async_app_engine).aget_tuple(config)) is not None


# -- 2. a Connection or Session: the caller's transaction ------------------------


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
@pytest.mark.parametrize("kind", ["connection", "session"])
def test_saver_joins_caller_transaction(
    app_engine: Engine, thread_id: str, kind: str, outcome: str
) -> None:
    with caller_transaction(app_engine, kind) as caller:
        saver = SQLSaver(caller)
        config = saver.put(*put_args(thread_id))  # the transaction's first statement
        caller.execute(app_rows.insert(), {"thread_id": thread_id})
        saver.put_writes(config, [("x", 1)], "task")
        assert saver.get_tuple(config).pending_writes == [("task", "x", 1)]
        assert counts(app_engine, thread_id) == NOTHING  # not committed by the saver
        getattr(caller, outcome)()
    expected = rows(checkpoints=1, blobs=1, writes=1, app=1) if outcome == "commit" else NOTHING
    assert counts(app_engine, thread_id) == expected


def test_first_statement_savepoint_commits_nothing(app_engine: Engine, thread_id: str) -> None:
    """pysqlite runs a SAVEPOINT outside a transaction as a transaction of its
    own, whose RELEASE commits: the saver must open the caller's first."""
    with app_engine.connect() as conn:
        SQLSaver(conn).put(*put_args(thread_id))
        conn.rollback()
    assert counts(app_engine, thread_id) == NOTHING


# -- 3. a failed write on a caller's transaction -------------------------------


@pytest.mark.parametrize("kind", ["connection", "session"])
def test_failed_write_leaves_caller_transaction_usable(
    app_engine: Engine, thread_id: str, kind: str
) -> None:
    refused = REFUSED + thread_id
    with refusing_checkpoints(app_engine), caller_transaction(app_engine, kind) as caller:
        saver = SQLSaver(caller)
        config = saver.put(*put_args(thread_id))
        with pytest.raises(TypeError, match="not msgpack serializable"):
            saver.put(*put_args(refused + "-lock", threading.Lock()))  # fails before SQL
        with pytest.raises(DBAPIError, match="refused"):
            saver.put(*put_args(refused))  # blob row stored, checkpoint row refused
        # Still usable (PostgreSQL would say "current transaction is aborted").
        caller.execute(app_rows.insert(), {"thread_id": thread_id})
        saver.put_writes(config, [("x", 1)], "task")
        assert saver.get_tuple(config_of(refused)) is None
        caller.commit()
    assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1, writes=1, app=1)
    assert counts(app_engine, refused) == NOTHING  # no orphan blob
    assert counts(app_engine, refused + "-lock") == NOTHING


async def test_async_failed_write_leaves_caller_transaction_usable(
    app_engine: Engine, async_app_engine: AsyncEngine, thread_id: str
) -> None:
    refused = REFUSED + thread_id
    with refusing_checkpoints(app_engine):
        async with async_app_engine.connect() as conn:
            saver = AsyncSQLSaver(conn)
            await saver.aput(*put_args(thread_id))
            with pytest.raises(DBAPIError, match="refused"):
                await saver.aput(*put_args(refused))
            await conn.execute(app_rows.insert(), {"thread_id": thread_id})
            await conn.commit()
    assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1, app=1)
    assert counts(app_engine, refused) == NOTHING


def test_failed_second_statement_leaves_no_blob(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    """The same, with a real data error: the blob row fits, then the
    checkpoint id does not (MySQL: over 150 bytes; PostgreSQL: a NUL;
    SQLite: a lone surrogate, which the driver cannot encode)."""
    bad_id = {"mysql": "9" * 151, "postgres": "bad\x00id", "sqlite": "bad\ud800id"}[backend.name]
    args = put_args(thread_id)
    args[1]["id"] = bad_id
    with app_engine.connect() as conn:
        saver = SQLSaver(conn)
        with pytest.raises((StatementError, UnicodeEncodeError)):
            saver.put(*args)
        conn.execute(app_rows.insert(), {"thread_id": thread_id})
        conn.commit()
    assert counts(app_engine, thread_id) == rows(app=1)


@pytest.mark.parametrize("kind", ["connection", "session"])
def test_autocommit_caller_write_is_whole_or_nothing(
    backend: Any, app_engine: Engine, thread_id: str, kind: str
) -> None:
    """An AUTOCOMMIT caller has no transaction to join: each write is then a
    transaction of its own, stored whole, or not at all when it fails."""
    autocommit = app_engine.execution_options(isolation_level="AUTOCOMMIT")
    refused = thread_id + "-refused"
    with caller_transaction(autocommit, kind) as caller:
        saver = SQLSaver(caller)
        saver.put(*put_args(thread_id))
        args = put_args(refused)
        args[1]["id"] = {"mysql": "9" * 151, "postgres": "bad\x00id", "sqlite": "bad\ud800id"}[
            backend.name
        ]
        with pytest.raises((StatementError, UnicodeEncodeError)):
            saver.put(*args)
    assert counts(app_engine, thread_id) == rows(checkpoints=1, blobs=1)
    assert counts(app_engine, refused) == NOTHING


async def test_autocommit_engine_write_is_whole_or_nothing(
    app_engine: Engine, async_app_engine: AsyncEngine, thread_id: str
) -> None:
    sync_saver = SQLSaver(app_engine.execution_options(isolation_level="AUTOCOMMIT"))
    async_saver = AsyncSQLSaver(async_app_engine.execution_options(isolation_level="AUTOCOMMIT"))
    sync_saver.put(*put_args(thread_id))
    await async_saver.aput(*put_args(thread_id))
    assert counts(app_engine, thread_id) == rows(checkpoints=2, blobs=2)
    with refusing_checkpoints(app_engine):
        with pytest.raises(DBAPIError, match="refused"):
            sync_saver.put(*put_args(REFUSED + thread_id))
        assert counts(app_engine, REFUSED + thread_id) == NOTHING  # no orphan blob
        with pytest.raises(DBAPIError, match="refused"):
            await async_saver.aput(*put_args(REFUSED + thread_id))
        assert counts(app_engine, REFUSED + thread_id) == NOTHING


# -- 4. async: AsyncConnection and AsyncSession -----------------------------------


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
@pytest.mark.parametrize("kind", ["connection", "session"])
async def test_async_saver_joins_caller_transaction(
    app_engine: Engine, async_app_engine: AsyncEngine, thread_id: str, kind: str, outcome: str
) -> None:
    opened = async_app_engine.connect() if kind == "connection" else AsyncSession(async_app_engine)
    async with opened as caller:
        saver = AsyncSQLSaver(caller)
        config = await saver.aput(*put_args(thread_id))  # the transaction's first statement
        await caller.execute(app_rows.insert(), {"thread_id": thread_id})
        await saver.aput_writes(config, [("x", 1)], "task")
        assert (await saver.aget_tuple(config)).pending_writes == [("task", "x", 1)]
        assert counts(app_engine, thread_id) == NOTHING
        await getattr(caller, outcome)()
    expected = rows(checkpoints=1, blobs=1, writes=1, app=1) if outcome == "commit" else NOTHING
    assert counts(app_engine, thread_id) == expected


# -- 5. AsyncSQLSaver's sync methods ---------------------------------------------


async def test_async_saver_sync_methods_from_another_thread(
    async_app_engine: AsyncEngine, thread_id: str
) -> None:
    saver = AsyncSQLSaver(async_app_engine)  # takes the running loop
    config = await asyncio.to_thread(saver.put, *put_args(thread_id, "one"))
    await asyncio.to_thread(saver.put_writes, config, [("x", 2)], "task")
    got = await asyncio.to_thread(saver.get_tuple, config)
    assert got.checkpoint["channel_values"] == {"x": "one", "log": ["one"]}
    assert got.pending_writes == [("task", "x", 2)]
    listed = await asyncio.to_thread(lambda: list(saver.list(config_of(thread_id))))
    assert [t.config for t in listed] == [config]
    await asyncio.to_thread(saver.copy_thread, thread_id, thread_id + "-copy")
    await asyncio.to_thread(saver.delete_thread, thread_id)
    assert await saver.aget_tuple(config) is None
    assert await saver.aget_tuple(config_of(thread_id + "-copy")) is not None


async def test_async_saver_sync_methods_refuse_the_event_loop(
    async_saver: AsyncSQLSaver, thread_id: str
) -> None:
    config = await async_saver.aput(*put_args(thread_id))
    calls: list[Callable[[], Any]] = [
        lambda: async_saver.get_tuple(config),
        lambda: next(async_saver.list(config)),
        lambda: async_saver.get_delta_channel_history(config=config, channels=["x"]),
        lambda: async_saver.put(*put_args(thread_id)),
        lambda: async_saver.put_writes(config, [("x", 1)], "task"),
        lambda: async_saver.copy_thread(thread_id, thread_id + "-copy"),
        lambda: async_saver.prune([thread_id]),
        lambda: async_saver.delete_for_runs(["run"]),
        lambda: async_saver.delete_thread(thread_id),
    ]
    for call in calls:
        with pytest.raises(asyncio.InvalidStateError):
            call()
    assert [t.config async for t in async_saver.alist(config_of(thread_id))] == [config]
    assert (await async_saver.aget_tuple(config)).pending_writes == []


# -- 6. SQLSaver's async methods ---------------------------------------------------


@pytest.mark.parametrize("kind", ["engine", "connection"])
async def test_sync_saver_async_methods(app_engine: Engine, thread_id: str, kind: str) -> None:
    with app_engine.connect() as conn:
        saver = SQLSaver(app_engine if kind == "engine" else conn)
        first = await saver.aput(*put_args(thread_id, "one", run_id="run-1"))
        second = await saver.aput(
            *put_args(thread_id, "two", first["configurable"]["checkpoint_id"], run_id="run-2")
        )
        await saver.aput_writes(second, [("x", 3)], "task")
        got = await saver.aget_tuple(config_of(thread_id))
        assert got.config == second and got.pending_writes == [("task", "x", 3)]
        assert got.checkpoint["channel_values"] == {"x": "two", "log": ["two"]}
        assert [t.config async for t in saver.alist(config_of(thread_id))] == [second, first]
        history = await saver.aget_delta_channel_history(config=second, channels=["x"])
        assert set(history) == {"x"}
        await saver.acopy_thread(thread_id, thread_id + "-copy")
        await saver.aprune([thread_id + "-copy"])
        assert len([t async for t in saver.alist(config_of(thread_id + "-copy"))]) == 1
        await saver.adelete_for_runs(["run-2"])
        assert (await saver.aget_tuple(config_of(thread_id))).config == first
        await saver.adelete_thread(thread_id)
        assert await saver.aget_tuple(config_of(thread_id)) is None
        conn.commit()


# -- 7, 8. concurrency -------------------------------------------------------------

WORKERS = 16
JOBS = 48


def _concurrent_jobs(thread_id: str, parent: dict[str, Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """Half put_writes on ``parent``, half puts of its children (built up
    front: uuid6 ids are not made thread-safely)."""
    parent_id = parent["configurable"]["checkpoint_id"]
    jobs = []
    for i in range(JOBS):
        if i % 2:
            jobs.append(("put_writes", (parent, [("x", i)], f"task-{i}")))
        else:
            jobs.append(("put", put_args(thread_id, i, parent_id)))
    return jobs


def _check_all_landed(
    thread_id: str, parent: dict[str, Any], listed: list[Any], parent_tuple: Any
) -> None:
    children = [t for t in listed if t.config != parent]
    assert sorted(t.checkpoint["channel_values"]["x"] for t in children) == list(range(0, JOBS, 2))
    assert all(t.parent_config == parent for t in children)
    assert sorted(w[2] for w in parent_tuple.pending_writes) == list(range(1, JOBS, 2))


@contextmanager
def sync_target(
    kind: str, sync_saver: SQLSaver, app_engine: Engine
) -> Iterator[tuple[SQLSaver, Any]]:
    """A saver of the given kind, and the caller object to commit (if any)."""
    if kind in ("from_url", "engine"):
        yield (sync_saver if kind == "from_url" else SQLSaver(app_engine)), None
    else:
        with caller_transaction(app_engine, kind) as caller:
            yield SQLSaver(caller), caller


@pytest.mark.parametrize("kind", ["from_url", "engine", "connection", "session"])
def test_concurrent_writes_from_threads(
    sync_saver: SQLSaver, app_engine: Engine, thread_id: str, kind: str
) -> None:
    with sync_target(kind, sync_saver, app_engine) as (saver, caller):
        parent = saver.put(*put_args(thread_id, "parent"))
        jobs = _concurrent_jobs(thread_id, parent)
        with ThreadPoolExecutor(WORKERS) as pool:
            for future in [pool.submit(getattr(saver, name), *args) for name, args in jobs]:
                future.result()
        if caller is not None:
            caller.commit()
    listed = list(sync_saver.list(config_of(thread_id)))
    _check_all_landed(thread_id, parent, listed, sync_saver.get_tuple(parent))


@asynccontextmanager
async def async_target(
    kind: str, async_saver: AsyncSQLSaver, engine: AsyncEngine
) -> AsyncIterator[tuple[AsyncSQLSaver, Any]]:
    """`sync_target`'s async twin."""
    if kind in ("from_url", "engine"):
        yield (async_saver if kind == "from_url" else AsyncSQLSaver(engine)), None
    else:
        async with engine.connect() if kind == "connection" else AsyncSession(engine) as caller:
            yield AsyncSQLSaver(caller), caller


@pytest.mark.parametrize("kind", ["from_url", "engine", "connection", "session"])
async def test_concurrent_writes_from_tasks(
    async_saver: AsyncSQLSaver, async_app_engine: AsyncEngine, thread_id: str, kind: str
) -> None:
    async with async_target(kind, async_saver, async_app_engine) as (saver, caller):
        parent = await saver.aput(*put_args(thread_id, "parent"))
        jobs = _concurrent_jobs(thread_id, parent)
        await asyncio.gather(*(getattr(saver, "a" + name)(*args) for name, args in jobs))
        if caller is not None:
            await caller.commit()
    listed = [t async for t in async_saver.alist(config_of(thread_id))]
    _check_all_landed(thread_id, parent, listed, await async_saver.aget_tuple(parent))


def test_two_from_url_savers_write_concurrently(backend: Any, thread_id: str) -> None:
    """On SQLite: two engines, two pools, one file. Reads-then-writes
    (copy_thread, prune) included, which a deferred BEGIN would deadlock."""
    savers = [SQLSaver.from_url(backend.sync_url) for _ in range(2)]
    barrier = threading.Barrier(8)

    def work(worker: int) -> None:
        saver, own = savers[worker % 2], f"{thread_id}-{worker}"
        barrier.wait()
        config = None
        for step in range(6):
            parent_id = config and config["configurable"]["checkpoint_id"]
            config = saver.put(*put_args(own, step, parent_id))
            saver.put_writes(config, [("x", step)], "task")
            assert saver.get_tuple(config) is not None
        saver.copy_thread(own, own + "-copy")
        saver.prune([own + "-copy"])

    if backend.name == "sqlite":
        with savers[0]._owned_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(8)))
        for worker in range(8):
            own = f"{thread_id}-{worker}"
            assert len(list(savers[0].list(config_of(own)))) == 6
            assert len(list(savers[1].list(config_of(own + "-copy")))) == 1
    finally:
        for saver in savers:
            saver.close()


# -- 9. wrong bind types --------------------------------------------------------------


async def test_wrong_bind_types(app_engine: Engine, async_app_engine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match=r"use AsyncSQLSaver.*got AsyncEngine"):
        SQLSaver(async_app_engine)
    async with async_app_engine.connect() as conn:
        with pytest.raises(TypeError, match=r"use AsyncSQLSaver.*got AsyncConnection"):
            SQLSaver(conn)
    with pytest.raises(TypeError, match=r"use AsyncSQLSaver.*got AsyncSession"):
        SQLSaver(AsyncSession(async_app_engine))
    with pytest.raises(TypeError, match=r"use SQLSaver.*got Engine"):
        AsyncSQLSaver(app_engine)
    with Session(app_engine) as session:
        with pytest.raises(TypeError, match=r"use SQLSaver.*got Session"):
            AsyncSQLSaver(session)
    with pytest.raises(TypeError, match=r"use AsyncSQLSaver.*got str"):
        SQLSaver(str(app_engine.url))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"AsyncSession bound to an AsyncEngine"):
        AsyncSQLSaver(AsyncSession())


# -- 10. no connection left checked out --------------------------------------------


async def test_sync_from_url_saver_returns_every_connection(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    with refusing_checkpoints(app_engine), SQLSaver.from_url(backend.sync_url) as saver:
        pool = saver._owned_engine.pool
        config = saver.put(*put_args(thread_id, run_id="run"))
        saver.put_writes(config, [("x", 1)], "task")
        saver.get_tuple(config)
        next(saver.list(config_of(thread_id)))  # left unfinished
        saver.get_delta_channel_history(config=config, channels=["x"])
        saver.copy_thread(thread_id, thread_id + "-copy")
        saver.put(*put_args(thread_id + "-copy"))  # no longer the source's copy
        with pytest.raises(ValueError, match="already has checkpoints"):
            saver.copy_thread(thread_id, thread_id + "-copy")
        await asyncio.gather(*(saver.aget_tuple(config) for _ in range(8)))
        await saver.aput_writes(config, [("x", 2)], "task-2")
        saver.prune([thread_id])
        saver.delete_for_runs(["run"])
        saver.delete_thread(thread_id + "-copy")
        # Last, and kept: its traceback holds the failed call's frames, so a
        # leaked connection cannot be handed back by the garbage collector.
        with pytest.raises(DBAPIError, match="refused") as failed:
            saver.put(*put_args(REFUSED + thread_id))
        # None out but those SQLite's saver keeps open between operations.
        assert pool.checkedout() == kept_open(saver), failed


def test_from_url_keeps_connections_between_operations(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    """A from_url saver keeps its connection open between operations, with
    no checkout from the pool per operation (`kept.keeps_connections`).
    A connection an operation failed on goes back to the pool."""
    checkouts: list[object] = []
    with refusing_checkpoints(app_engine), SQLSaver.from_url(backend.sync_url) as saver:
        pool = saver._owned_engine.pool
        config = saver.put(*put_args(thread_id))
        event.listen(pool, "checkout", lambda *args: checkouts.append(args))
        for step in range(3):
            saver.put_writes(config, [("x", step)], f"task-{step}")
            assert len(saver.get_tuple(config).pending_writes) == step + 1
        assert (len(checkouts), pool.checkedout()) == (0, 1)
        with pytest.raises(DBAPIError, match="refused"):
            saver.put(*put_args(REFUSED + thread_id))
        assert pool.checkedout() == 0
        assert saver.get_tuple(config) is not None
        assert (len(checkouts), pool.checkedout()) == (1, 1)


async def test_async_from_url_keeps_connections_between_operations(
    backend: Any, thread_id: str
) -> None:
    """So does an async one: the sync connections under its async driver's
    (on SQLite, those of its sync engine, `AsyncRunner` in a worker thread), handed back by
    ``aclose()``."""
    checkouts: list[object] = []
    checkins: list[object] = []
    async with AsyncSQLSaver.from_url(backend.async_url) as saver:
        config = await saver.aput(*put_args(thread_id))
        engine = saver._threaded_engine or saver._owned_engine.sync_engine
        pool = engine.pool
        event.listen(pool, "checkout", lambda *args: checkouts.append(args))
        for step in range(3):
            await saver.aput_writes(config, [("x", step)], f"task-{step}")
            assert len((await saver.aget_tuple(config)).pending_writes) == step + 1
        assert (len(checkouts), pool.checkedout(), kept_open(saver)) == (0, 1, 1)
        event.listen(pool, "checkin", lambda *args: checkins.append(args))
    assert len(checkins) == 1


def test_kept_connection_goes_back_to_the_pool_when_its_lease_ends(
    backend: Any, thread_id: str
) -> None:
    """A kept connection skips the pool's checkout, and so its recycling
    (``pool_recycle``): after `KeptConnections.LEASE` seconds it goes back
    to the pool, which checks it out again, recycled if it is old."""
    checkouts: list[object] = []
    with SQLSaver.from_url(backend.sync_url) as saver:
        config = saver.put(*put_args(thread_id))
        event.listen(saver._owned_engine.pool, "checkout", lambda *args: checkouts.append(args))
        saver.get_tuple(config)
        assert len(checkouts) == 0
        kept_of(saver).LEASE = 0.0
        saver.get_tuple(config)
        assert len(checkouts) == 1
        assert kept_open(saver) == 1


async def test_async_kept_connection_goes_back_to_the_pool_when_its_lease_ends(
    backend: Any, thread_id: str
) -> None:
    """So does an async saver's (its sync connections under the async
    driver's; on SQLite, `AsyncRunner` in a worker thread's)."""
    checkouts: list[object] = []
    async with AsyncSQLSaver.from_url(backend.async_url) as saver:
        config = await saver.aput(*put_args(thread_id))
        engine = saver._threaded_engine or saver._owned_engine.sync_engine
        event.listen(engine.pool, "checkout", lambda *args: checkouts.append(args))
        await saver.aget_tuple(config)
        assert len(checkouts) == 0
        kept_of(saver).LEASE = 0.0
        assert (await saver.aget_tuple(config)) is not None
        assert len(checkouts) == 1
        assert kept_open(saver) == 1


def test_no_connection_is_kept_where_the_pool_pings_at_checkout(
    backend: Any, thread_id: str
) -> None:
    """``pool_pre_ping`` asks for a ping at every checkout, which a kept
    connection would skip: then each operation checks one out."""
    checkouts: list[object] = []
    engine_kwargs = {"pool_pre_ping": True}
    with SQLSaver.from_url(backend.sync_url, engine_kwargs=engine_kwargs) as saver:
        config = saver.put(*put_args(thread_id))
        event.listen(saver._owned_engine.pool, "checkout", lambda *args: checkouts.append(args))
        saver.get_tuple(config)
        saver.put_writes(config, [("x", 1)], "task")
        assert (len(checkouts), kept_open(saver)) == (2, 0)


def test_connection_left_in_a_transaction_is_not_kept(backend: Any, thread_id: str) -> None:
    """A connection that an operation left in a transaction (none of
    sqlsaver's does) is discarded, not kept nor pooled: its next user would
    join that transaction (MySQL's pool resets nothing on return)."""

    def leave_a_transaction_open(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    with SQLSaver.from_url(backend.sync_url) as saver:
        config = saver.put(*put_args(thread_id))
        pool = saver._owned_engine.pool
        saver._runner.read(leave_a_transaction_open)
        assert (kept_open(saver), pool.checkedout()) == (0, 0)
        assert saver.get_tuple(config) is not None
        assert (kept_open(saver), pool.checkedout()) == (1, 1)


async def test_async_connection_left_in_a_transaction_is_not_kept(
    backend: Any, thread_id: str
) -> None:
    """The same for an async saver, as its driver tells (asyncpg, asyncmy;
    on SQLite, sqlite3 under `AsyncRunner` in a worker thread)."""

    def leave_a_transaction_open(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    async with AsyncSQLSaver.from_url(backend.async_url) as saver:
        config = await saver.aput(*put_args(thread_id))
        pool = (saver._threaded_engine or saver._owned_engine.sync_engine).pool
        await saver._runner.read(leave_a_transaction_open)
        assert (kept_open(saver), pool.checkedout()) == (0, 0)
        assert await saver.aget_tuple(config) is not None
        assert (kept_open(saver), pool.checkedout()) == (1, 1)


class Interrupted(BaseException):
    """Not an `Exception`: as a cancelled task's `CancelledError`."""


@pytest.mark.parametrize(
    "failure", ["error", "error in a transaction", "interrupted"], ids=lambda f: f
)
def test_connection_an_operation_failed_on(backend: Any, thread_id: str, failure: str) -> None:
    """goes back to the pool after an error; it is closed for good when the
    operation left it in a transaction, or was interrupted (a cancelled
    task may leave a reply unread on it)."""
    raised = Interrupted if failure == "interrupted" else ValueError

    def fail(conn: Any) -> None:
        if failure == "error in a transaction":
            conn.exec_driver_sql("BEGIN")
        raise raised(failure)

    invalidated: list[object] = []
    with SQLSaver.from_url(backend.sync_url) as saver:
        config = saver.put(*put_args(thread_id))
        pool = saver._owned_engine.pool
        event.listen(pool, "invalidate", lambda *args: invalidated.append(args))
        with pytest.raises(raised):
            saver._runner.read(fail)
        assert len(invalidated) == (0 if failure == "error" else 1)
        assert (kept_open(saver), pool.checkedout()) == (0, 0)
        assert saver.get_tuple(config) is not None


def test_no_connection_is_kept_on_an_in_memory_sqlite_database() -> None:
    """Its one connection is shared by every thread (``StaticPool``)."""
    with SQLSaver.from_url("sqlite://") as saver:
        saver.setup()
        config = saver.put(*put_args("t"))
        assert saver.get_tuple(config) is not None
        assert runner_of(saver)._kept is None


def test_kept_connections_never_starve_a_small_pool(backend: Any, thread_id: str) -> None:
    """With a pool smaller than what a saver may keep open, operations
    waiting for the pool get the connections that others finish with."""
    engine_kwargs = {"pool_size": 2, "pool_timeout": 5}
    with SQLSaver.from_url(backend.sync_url, engine_kwargs=engine_kwargs) as saver:
        config = saver.put(*put_args(thread_id))

        def reads(_: int) -> int:
            return sum(saver.get_tuple(config) is not None for _ in range(20))

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(reads, range(8))) == [20] * 8


async def test_async_from_url_saver_returns_every_connection(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    with refusing_checkpoints(app_engine):
        async with AsyncSQLSaver.from_url(backend.async_url) as saver:
            # SQLite: a sync engine of the saver's, in a worker thread (`AsyncRunner`).
            engine = saver._threaded_engine or saver._owned_engine.sync_engine
            pool = engine.pool
            config = await saver.aput(*put_args(thread_id, run_id="run"))
            await asyncio.gather(
                *(saver.aput_writes(config, [("x", i)], f"task-{i}") for i in range(8)),
                *(saver.aget_tuple(config) for _ in range(8)),
            )
            await anext(saver.alist(config_of(thread_id)))  # left unfinished
            await asyncio.to_thread(saver.get_tuple, config)
            await saver.acopy_thread(thread_id, thread_id + "-copy")
            await saver.aput(*put_args(thread_id + "-copy"))  # no longer the source's copy
            with pytest.raises(ValueError, match="already has checkpoints"):
                await saver.acopy_thread(thread_id, thread_id + "-copy")
            await saver.aprune([thread_id])
            await saver.adelete_for_runs(["run"])
            await saver.adelete_thread(thread_id + "-copy")
            with pytest.raises(DBAPIError, match="refused") as failed:  # as above
                await saver.aput(*put_args(REFUSED + thread_id))
            assert pool.checkedout() == kept_open(saver), failed


async def test_from_url_savers_log_in_at_most_pool_size_times(backend: Any, thread_id: str) -> None:
    """A burst of more concurrent operations than the pool holds waits for
    pooled connections: none is opened beyond the pool and closed again
    (each would be a login, with statements prepared anew)."""
    logins: list[object] = []

    def login(dbapi_connection: Any, record: Any) -> None:
        logins.append(record)

    event.listen(Pool, "connect", login)
    try:
        burst = 4 * engines.POOL_SIZE
        async with AsyncSQLSaver.from_url(backend.async_url) as saver:
            await saver.setup()
            configs = await asyncio.gather(
                *(saver.aput(*put_args(f"{thread_id}-{i}", i)) for i in range(burst))
            )
            found = await asyncio.gather(*(saver.aget_tuple(c) for c in configs))
        assert [t.checkpoint["channel_values"]["x"] for t in found] == list(range(burst))
        with SQLSaver.from_url(backend.sync_url) as sync_saver, ThreadPoolExecutor(burst) as pool:
            found = list(pool.map(sync_saver.get_tuple, configs))
        assert [t.checkpoint["channel_values"]["x"] for t in found] == list(range(burst))
    finally:
        event.remove(Pool, "connect", login)
    assert 2 <= len(logins) <= 2 * engines.POOL_SIZE, len(logins)


# -- 11. a connection that died under the saver ---------------------------------------


def kept_of(saver: SQLSaver | AsyncSQLSaver) -> Any:
    """The connections a from_url saver keeps (`kept.KeptConnections`)."""
    kept = runner_of(saver)._kept
    assert kept is not None
    return kept


def _keep(kept: Any, count: int) -> None:
    """Have ``count`` connections kept open, as concurrent operations leave
    them (an async saver's in a greenlet: `greenlet_spawn`)."""
    leases = [kept.take() for _ in range(count)]
    for conn, leased in leases:
        kept.give_back(conn, leased)
    assert len(kept._idle) == count


# How to end a connection (`helpers.SESSION_ID`) from another.
KILL = {"postgres": "SELECT pg_terminate_backend({})", "mysql": "KILL {}"}


def _kill_kept_connections(backend: Any, kept: Any, app_engine: Engine) -> None:
    """Kill the connections a saver keeps open between operations, as a
    server restart or an idle timeout would (SQLite: close them under it)."""
    assert kept._idle
    for conn, _ in kept._idle:
        driver_conn = conn.connection.driver_connection
        if backend.name == "sqlite":
            driver_conn.close()
            continue
        victim = SESSION_ID[conn.dialect.driver](driver_conn)
        with app_engine.connect() as other:
            other.exec_driver_sql(KILL[backend.name].format(int(victim)))
            other.commit()


def test_dead_kept_connections_are_replaced(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    """No pre-ping round trip per operation: an operation that meets a dead
    connection has its transaction run again on a fresh one, reads and
    writes. After a disconnect, the other kept connections (dead too, after
    a server restart) are not tried: more of them than `runner.ATTEMPTS`."""
    with SQLSaver.from_url(backend.sync_url) as saver:
        saver.put(*put_args(thread_id))
        _keep(kept_of(saver), ATTEMPTS + 2)
        _kill_kept_connections(backend, kept_of(saver), app_engine)
        assert saver.get_tuple(config_of(thread_id)) is not None
        assert kept_open(saver) == 1
        _kill_kept_connections(backend, kept_of(saver), app_engine)
        saver.put(*put_args(thread_id + "-2"))
    assert counts(app_engine, thread_id + "-2") == rows(checkpoints=1, blobs=1)


def test_dead_pooled_connections_are_replaced(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    """A disconnect replaces the pool too: its connections, opened before,
    are as dead (a server restart), and a retry must not meet them, in
    whatever order the pool hands them out."""
    engine_kwargs = {"pool_use_lifo": False}  # the oldest first
    with SQLSaver.from_url(backend.sync_url, engine_kwargs=engine_kwargs) as saver:
        saver.put(*put_args(thread_id))
        kept = kept_of(saver)
        _keep(kept, ATTEMPTS + 2)
        _kill_kept_connections(backend, kept, app_engine)
        with kept._lock:  # back to the pool, dead
            pooled, kept._idle = kept._idle, []
        for conn, _ in pooled:
            conn.close()
        assert saver.get_tuple(config_of(thread_id)) is not None


async def test_async_dead_kept_connections_are_replaced(
    backend: Any, app_engine: Engine, thread_id: str
) -> None:
    """The same for an async saver, whose kept connections are the sync
    ones under its async driver's."""
    async with AsyncSQLSaver.from_url(backend.async_url) as saver:
        await saver.aput(*put_args(thread_id))
        await greenlet_spawn(_keep, kept_of(saver), ATTEMPTS + 2)
        _kill_kept_connections(backend, kept_of(saver), app_engine)
        assert await saver.aget_tuple(config_of(thread_id)) is not None
        assert kept_open(saver) == 1
        _kill_kept_connections(backend, kept_of(saver), app_engine)
        await saver.aput(*put_args(thread_id + "-2"))
    assert counts(app_engine, thread_id + "-2") == rows(checkpoints=1, blobs=1)
