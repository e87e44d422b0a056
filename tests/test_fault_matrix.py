"""A fault-injection matrix: every operation, every backend, sync and async,
every kind of target, a fault at every statement boundary.

For each operation (`OPS`) on each target kind (a `from_url` saver; a saver
on the caller's Engine, Connection, Session) the test first runs it once
cleanly (the state it leaves is "after"), then again on fresh data with a
fault, for k = 1, 2, ... until the operation runs to its end without meeting
it:

1. ``kill_before``: the connection ended before statement k;
2. ``kill_after``: ended after statement k (so also after the last one and
   before COMMIT, and after the COMMIT with no error);
3. ``commit_lost``: the k-th COMMIT runs for real, then the connection is
   ended and the error a dead connection gives is raised (run on the dead
   driver connection, not made up);

and once (4-5), or at every statement (6):

4. ``serde``: the serializer raises (on dumps for writes, loads for reads);
5. ``lock``: another connection holds a conflicting lock, and the saver's
   connections have a short lock timeout;
6. ``deadlock``: the server reports a deadlock on the saver's connection
   before statement k (PostgreSQL: a ``DO`` block raising 40P01; MariaDB: a
   procedure that SIGNALs 40001 / 1213; SQLite has none).

Ending a connection is real: ``pg_terminate_backend``, MariaDB's ``KILL``,
closing SQLite's connection (`test_faults.Killer`). *When* is decided by
`sqlsaver.execution.prepared.tap`, which sees every statement sqlsaver runs
on its production path, and for what SQLAlchemy sends itself by its
ConnectionEvents (``begin``, ``savepoint``, ``release_savepoint``,
``commit``) and a wrapped ``dialect.do_commit``; ``setup`` (Alembic) by
``before/after_cursor_execute``.

Each case checks: the operation completes, or raises the database's error
(`DBAPIError`) or a documented sqlsaver error, never an internal one;
savers on their own engines complete after one dead connection or deadlock
(they run the operation again); the rows of the threads involved, counted
from another connection, are the state before or the state after, nothing
in between; on a caller's Connection or Session, the caller's earlier write
in its transaction commits after a failure that left its connection alive,
and after a kill its rollback and a new transaction work; the next
operation on the same saver succeeds.

The matrix's size and failures are written to ``fault_matrix.json`` in
pytest's base temporary directory (see docs/testing.md).
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import call
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.exc import DBAPIError
from test_faults import Target, config_of, kill, saver_on

from sqlsaver import SchemaNotReadyError, ValueTooLargeError, migrate
from sqlsaver.execution import prepared
from sqlsaver.models import Base, blobs, checkpoints, threads, writes

TARGETS = ["from_url", "engine", "connection", "session"]
OWN_ENGINE = ("from_url", "engine")  # savers that retry (`runner.ATTEMPTS`)
MARKER = "fault_matrix_marker"  # the caller's own table, for its own writes
DEADLOCK_PROC = "fault_matrix_deadlock"
TABLES = [t.name for t in Base.metadata.sorted_tables] + [migrate.VERSION_TABLE]


class SerdeBoom(Exception):
    """The serializer's own error (`BrokenSerde`)."""


class BrokenSerde(JsonPlusSerializer):
    """LangGraph's serializer, made to raise on dumps or loads on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = ""  # "dumps", "loads" or ""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if self.broken == "dumps":
            raise SerdeBoom("dumps")
        return super().dumps_typed(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        if self.broken == "loads":
            raise SerdeBoom("loads")
        return super().loads_typed(data)


# Errors an operation may raise (each case's "documented" set).
ALLOWED = (DBAPIError, SchemaNotReadyError, ValueTooLargeError, SerdeBoom)


# -- the matrix's count ----------------------------------------------------------


@dataclass
class Matrix:
    cases: int = 0
    failed: int = 0
    by_fault: Counter[str] = field(default_factory=Counter)
    by_backend: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


MATRIX = Matrix()


@pytest.fixture(scope="module", autouse=True)
def matrix_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Write the matrix's size and failures when the module ends."""
    yield
    path = tmp_path_factory.getbasetemp() / "fault_matrix.json"
    report = {
        "cases": MATRIX.cases,
        "failed": MATRIX.failed,
        "by_fault": dict(MATRIX.by_fault),
        "by_backend": dict(MATRIX.by_backend),
        "failures": MATRIX.failures,
    }
    path.write_text(json.dumps(report, indent=1))
    print(f"\nfault matrix: {MATRIX.cases} cases, {MATRIX.failed} failed ({path})")


# -- ending a connection ---------------------------------------------------------


def dead_error(dbapi_conn: Any) -> None:
    """Raise the error a statement gets on a dead driver connection."""
    cursor = dbapi_conn.cursor()
    cursor.execute("SELECT 1")
    cursor.fetchall()
    raise AssertionError("a statement ran on a killed connection")


DEADLOCK = {
    "postgres": "DO $$BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END$$",
    "mysql": f"CALL {DEADLOCK_PROC}()",
}


class Injector:
    """Told of every statement boundary of the operation under test (by the
    tap, SQLAlchemy's events and the wrapped ``do_commit``); when armed,
    injects ``fault`` at the ``at``-th boundary of its kind."""

    def __init__(self, backend: str, db: Engine) -> None:
        self.backend, self.db = backend, db
        self.fault = ""
        self.at = 0
        self.seen = 0
        self.fired = False

    def arm(self, fault: str, at: int) -> None:
        self.fault, self.at, self.seen, self.fired = fault, at, 0, False

    def disarm(self) -> None:
        self.fault = ""

    def _hit(self) -> bool:
        self.seen += 1
        if self.seen == self.at:
            self.fired = True
            return True
        return False

    # A statement about to run (``sqlsaver's own``: the tap's or a cursor
    # event's, where a driver error raised is the statement's own).
    def before(self, conn: Connection, sql: str, own: bool = True) -> None:
        if not self.fault or conn.engine is self.db:
            return
        if self.fault == "kill_before" and self._hit():
            kill(self.backend, self.db, conn.connection.dbapi_connection)
        elif self.fault == "deadlock" and own and self._hit():
            cursor = conn.connection.dbapi_connection.cursor()
            cursor.execute(DEADLOCK[self.backend])

    def after(self, conn: Connection, sql: str) -> None:
        if not self.fault or conn.engine is self.db:
            return
        if self.fault == "kill_after" and self._hit():
            kill(self.backend, self.db, conn.connection.dbapi_connection)
        elif self.fault == "commit_lost" and "COMMIT" in sql.upper() and self._hit():
            dbapi_conn = conn.connection.dbapi_connection
            kill(self.backend, self.db, dbapi_conn)
            dead_error(dbapi_conn)

    def committed(self, pooled: Any) -> None:
        """After a driver-level COMMIT (`dialect.do_commit`, given the
        pool's proxy of the driver's connection)."""
        if not self.fault:
            return
        dbapi_conn = pooled.dbapi_connection
        if self.fault == "kill_after" and self._hit():
            kill(self.backend, self.db, dbapi_conn)
        elif self.fault == "commit_lost" and self._hit():
            kill(self.backend, self.db, dbapi_conn)
            dead_error(dbapi_conn)


@contextlib.contextmanager
def injecting(
    injector: Injector, monkeypatch: pytest.MonkeyPatch, cursor_events: bool
) -> Iterator[None]:
    """Route the boundaries to ``injector``: the tap (or, for ``setup``,
    cursor events), and SQLAlchemy's transaction events."""
    listeners: list[tuple[str, Callable[..., None]]] = []
    if cursor_events:

        def before_cursor(conn: Connection, _c: Any, sql: str, *_: Any) -> None:
            injector.before(conn, sql)

        def after_cursor(conn: Connection, _c: Any, sql: str, *_: Any) -> None:
            injector.after(conn, sql)

        listeners += [("before_cursor_execute", before_cursor)]
        listeners += [("after_cursor_execute", after_cursor)]
    else:
        monkeypatch.setattr(prepared, "tap", injector)
    for name in ("begin", "savepoint", "release_savepoint", "commit"):

        def sent(conn: Connection, *_: Any, _name: str = name) -> None:
            injector.before(conn, _name.upper(), own=False)

        listeners.append((name, sent))
    for name, fn in listeners:
        event.listen(Engine, name, fn)
    try:
        yield
    finally:
        for name, fn in listeners:
            event.remove(Engine, name, fn)


# -- targets ---------------------------------------------------------------------

# Short lock waits for the saver's connections (the `lock` fault).
CONNECT_ARGS = {
    "psycopg": {"options": "-c lock_timeout=100"},
    "asyncpg": {"server_settings": {"lock_timeout": "100"}},
    "pymysql": {"init_command": "SET SESSION lock_wait_timeout = 0"},
    "asyncmy": {"init_command": "SET SESSION lock_wait_timeout = 0"},
    "pysqlite": {"timeout": 0.05},
    "aiosqlite": {"timeout": 0.05},
}


async def mark(target: Target, marker: str) -> None:
    """The caller's own write, in its transaction."""
    sql = text(f"INSERT INTO {MARKER} (id) VALUES (:id)")
    await target._do(target.caller.execute(sql, {"id": marker}))


def driver_of(url: str) -> str:
    scheme = url.split("://", 1)[0]
    return scheme.split("+", 1)[1] if "+" in scheme else "pysqlite"


# -- the operations ----------------------------------------------------------------


async def put(
    saver: Any,
    aio: bool,
    thread_id: str,
    parent: str | None = None,
    run_id: str = "",
    **values: Any,
) -> str:
    """A checkpoint of ``values`` (one blob row per channel); its id."""
    checkpoint = empty_checkpoint()
    version = f"{1 if parent is None else 2:032}.{uuid.uuid4().hex[:16]}"
    checkpoint["channel_values"] = dict(values)
    checkpoint["channel_versions"] = dict.fromkeys(values, version)
    metadata = {"run_id": run_id, "step": 0 if parent is None else 1}
    await call(
        aio,
        saver,
        "put",
        config_of(thread_id, parent),
        checkpoint,
        metadata,
        dict.fromkeys(values, version),
    )
    return checkpoint["id"]


async def put_writes(saver: Any, aio: bool, thread_id: str, checkpoint_id: str) -> None:
    """A task's writes: to a special channel, and two others."""
    writes_ = [("__error__", "failed"), ("a", "wa"), ("b", "wb")]
    await call(aio, saver, "put_writes", config_of(thread_id, checkpoint_id), writes_, "task-1")


@dataclass
class Case:
    """One operation's data: its thread ids, and what the seed made."""

    saver: Any
    aio: bool
    thread: str
    ids: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.thread + "-run"

    @property
    def threads(self) -> list[str]:
        return [self.thread, self.thread + "-copy"]


async def seed(case: Case) -> None:
    """A thread of two checkpoints (a run's), with values and writes."""
    first = await put(case.saver, case.aio, case.thread, None, case.run_id, a="a1", b="b1")
    second = await put(case.saver, case.aio, case.thread, first, case.run_id, a="a2")
    await put_writes(case.saver, case.aio, case.thread, second)
    case.ids = [first, second]


async def no_seed(case: Case) -> None:
    pass


async def op_put(case: Case) -> None:
    await put(case.saver, case.aio, case.thread, None, case.run_id, a="a1", b="b1")


async def op_put_writes(case: Case) -> None:
    await put_writes(case.saver, case.aio, case.thread, "c1")


async def op_get_tuple(case: Case) -> None:
    found = await call(case.aio, case.saver, "get_tuple", config_of(case.thread))
    assert found.checkpoint["channel_values"]["a"] == "a2", found
    assert len(found.pending_writes) == 3


async def op_list(case: Case) -> None:
    found = await call(case.aio, case.saver, "list", config_of(case.thread))
    assert [t.checkpoint["id"] for t in found] == case.ids[::-1]
    assert found[0].checkpoint["channel_values"]["a"] == "a2"


async def op_history(case: Case) -> None:
    config = config_of(case.thread, case.ids[1])
    found = await call(
        case.aio, case.saver, "get_delta_channel_history", config=config, channels=["a"]
    )
    assert set(found) <= {"a"}, found


async def op_delete_thread(case: Case) -> None:
    await call(case.aio, case.saver, "delete_thread", case.thread)


async def op_delete_for_runs(case: Case) -> None:
    await call(case.aio, case.saver, "delete_for_runs", [case.run_id])


async def op_copy_thread(case: Case) -> None:
    await call(case.aio, case.saver, "copy_thread", case.thread, case.thread + "-copy")


async def op_prune(case: Case) -> None:
    await call(case.aio, case.saver, "prune", [case.thread])


async def op_sweep_ttl(case: Case) -> None:
    CLOCK["now"] += 3600  # the thread's TTL (a minute) is over
    await call(case.aio, case.saver, "sweep_ttl")


async def op_setup(case: Case) -> None:
    if case.aio:
        await case.saver.setup()
    else:
        case.saver.setup()


Step = Callable[[Case], Awaitable[None]]
# name: (seed, operation, writes values, reads values)
OPS: dict[str, tuple[Step, Step, bool, bool]] = {
    "put": (no_seed, op_put, True, False),
    "put_writes": (no_seed, op_put_writes, True, False),
    "get_tuple": (seed, op_get_tuple, False, True),
    "list": (seed, op_list, False, True),
    "get_delta_channel_history": (seed, op_history, False, True),
    "delete_thread": (seed, op_delete_thread, False, False),
    "delete_for_runs": (seed, op_delete_for_runs, False, False),
    "copy_thread": (seed, op_copy_thread, False, False),
    "prune": (seed, op_prune, False, False),
    "sweep_ttl": (seed, op_sweep_ttl, False, False),
    "setup": (no_seed, op_setup, False, False),
}
# Operations that are no write under a SAVEPOINT: their failure may end a
# caller's transaction (PostgreSQL aborts it).
NOT_SAVEPOINTED = ("get_tuple", "list", "get_delta_channel_history", "setup")

# The TTL saver's clock (seconds), moved on by each sweep.
CLOCK = {"now": time.time()}


def state(db: Engine, case: Case) -> dict[str, Any]:
    """Committed rows of the case's threads per table, and the schema's
    revision, seen from a connection of its own."""
    found: dict[str, Any] = {}
    with db.connect() as conn:
        for role, thread in zip(("source", "copy"), case.threads, strict=True):
            for table in (checkpoints, blobs, writes, threads):
                count = conn.scalar(
                    select(func.count()).select_from(table).where(table.c.thread_id == thread)
                )
                found[f"{role}.{table.name.removeprefix('sqlsaver_')}"] = count
        found["revision"] = conn.scalar(text(f"SELECT version_num FROM {migrate.VERSION_TABLE}"))
    return found


def marked(db: Engine, marker: str) -> bool:
    with db.connect() as conn:
        return bool(
            conn.scalar(text(f"SELECT count(*) FROM {MARKER} WHERE id = :id"), {"id": marker})
        )


# -- the faults held from outside: a lock --------------------------------------------


@contextlib.contextmanager
def blocking(backend: str, db: Engine) -> Iterator[None]:
    """Another connection holds locks on sqlsaver's tables that conflict
    with anything the saver does (SQLite: the write lock; readers go on)."""
    with db.connect() as conn:
        if backend == "postgres":
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE")
        elif backend == "mysql":
            conn.exec_driver_sql("LOCK TABLES " + ", ".join(f"{t} WRITE" for t in TABLES))
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.exec_driver_sql("UNLOCK TABLES" if backend == "mysql" else "ROLLBACK")


@pytest.fixture
def fault_db(backend: Any) -> Iterator[Engine]:
    """An engine of the test's own to look at what was committed, kill and
    lock (pooled: it connects a few thousand times otherwise), with the
    caller's own table and, on MariaDB, the procedure that reports a
    deadlock."""
    db = create_engine(backend.sync_url, pool_size=2, isolation_level="AUTOCOMMIT")
    with db.connect() as conn:
        conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {MARKER} (id VARCHAR(100) PRIMARY KEY)")
        if backend.name == "mysql":
            conn.exec_driver_sql(f"DROP PROCEDURE IF EXISTS {DEADLOCK_PROC}")
            conn.exec_driver_sql(
                f"CREATE PROCEDURE {DEADLOCK_PROC}() SIGNAL SQLSTATE '40001'"
                " SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found when trying to get lock;"
                " try restarting transaction'"
            )
    yield db
    db.dispose()


# -- the matrix ------------------------------------------------------------------------


def faults_of(backend: str, kind: str) -> list[str]:
    faults = ["kill_before", "kill_after", "commit_lost", "serde", "lock"]
    if backend != "sqlite":
        faults.append("deadlock")
    return faults


@pytest.mark.parametrize("kind", TARGETS)
@pytest.mark.parametrize("name", list(OPS))
async def test_fault_matrix(
    backend: Any,
    aio: bool,
    kind: str,
    name: str,
    fault_db: Engine,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """``name`` on ``kind``, with each fault at each boundary (module doc)."""
    db = fault_db
    make_seed, operation, writes_values, reads_values = OPS[name]
    serde = BrokenSerde()
    options: dict[str, Any] = {"serde": serde}
    if name == "sweep_ttl":
        options |= {"ttl": {"default_ttl": 1}, "clock": lambda: CLOCK["now"]}
    injector = Injector(backend.name, db)
    prefix = f"fm-{uuid.uuid4().hex[:12]}"
    failures: list[str] = []
    url = backend.async_url if aio else backend.sync_url
    connect_args = CONNECT_ARGS[driver_of(url)]
    async with saver_on(kind, aio, backend, connect_args, **options) as target:
        if target.engine is not None:  # the caller's engine: its driver-level COMMIT
            dialect = target.engine.dialect
            do_commit = dialect.do_commit

            def committed(dbapi_conn: Any) -> None:
                do_commit(dbapi_conn)
                injector.committed(dbapi_conn)

            monkeypatch.setattr(dialect, "do_commit", committed)

        async def fresh(label: str) -> tuple[Case, dict[str, Any]]:
            case = Case(target.saver, aio, f"{prefix}-{label}")
            CLOCK["now"] = max(CLOCK["now"], time.time()) + 7200
            await make_seed(case)
            await target.commit()
            await target.begin()
            return case, state(db, case)

        # The clean run: the state each one after a fault may end in.
        with injecting(injector, monkeypatch, cursor_events=name == "setup"):
            reference, before_ref = await fresh("ref")
            await operation(reference)
            await target.commit()
            await target.begin()
            after_ref = state(db, reference)

            for fault in faults_of(backend.name, kind):
                at = 0
                while True:
                    at += 1
                    label = f"{fault}-{at}"
                    case, before = await fresh(label)
                    marker = f"{prefix}-{label}"
                    caller_marks = target.caller is not None and not (
                        fault == "lock" and backend.name == "sqlite"
                    )
                    if caller_marks:
                        await mark(target, marker)
                    once = fault in ("serde", "lock")
                    if not once:
                        injector.arm(fault, at)
                    try:
                        error = await run_case(
                            injector,
                            target,
                            case,
                            operation,
                            fault,
                            serde,
                            backend.name,
                            db,
                            writes_values,
                            reads_values,
                        )
                    finally:
                        injector.disarm()
                    hit = once or injector.fired
                    if hit:
                        where = f"{name} {backend.name} {'async' if aio else 'sync'} {kind} {label}"
                        try:
                            await check_case(
                                target,
                                db,
                                case,
                                before,
                                after_ref,
                                before_ref,
                                error,
                                marker if caller_marks else None,
                                name,
                                fault,
                            )
                        except AssertionError as failed:
                            failures.append(f"{where}: {failed}")
                            with contextlib.suppress(Exception):
                                await target.rollback()
                        MATRIX.cases += 1
                        MATRIX.by_fault[fault] += 1
                        MATRIX.by_backend[backend.name] += 1
                    else:
                        await target.commit()
                        await target.begin()
                    if once or not injector.fired:
                        break
    MATRIX.failed += len(failures)
    MATRIX.failures += failures
    assert not failures, "\n".join(failures)


async def run_case(
    injector: Injector,
    target: Target,
    case: Case,
    operation: Step,
    fault: str,
    serde: BrokenSerde,
    backend: str,
    db: Engine,
    writes_values: bool,
    reads_values: bool,
) -> BaseException | None:
    """Run the operation under the fault; the error it raised, if any."""
    try:
        if fault == "serde":
            serde.broken = "dumps" if writes_values else "loads" if reads_values else ""
            try:
                await operation(case)
            finally:
                serde.broken = ""
        elif fault == "lock":
            with blocking(backend, db):
                await operation(case)
        else:
            await operation(case)
    except Exception as error:  # noqa: BLE001 - judged by check_case
        return error
    return None


async def check_case(
    target: Target,
    db: Engine,
    case: Case,
    before: dict[str, Any],
    after: dict[str, Any],
    before_ref: dict[str, Any],
    error: BaseException | None,
    marker: str | None,
    name: str,
    fault: str,
) -> None:
    """What a case must leave (module doc)."""
    if error is not None and not isinstance(error, ALLOWED):
        where = "".join(traceback.format_tb(error.__traceback__)[-8:])
        raise AssertionError(f"internal error {type(error).__name__}: {error}\n{where}")
    assert before == before_ref, f"the seed left {before}, not {before_ref}"
    if (
        error is not None
        and target.kind in OWN_ENGINE
        and fault in ("kill_before", "kill_after", "commit_lost", "deadlock")
    ):
        where = "".join(traceback.format_exception(error)[-12:])
        raise AssertionError(f"not run again after one {fault}: {error!r}\n{where}") from error
    killed = isinstance(error, DBAPIError) and error.connection_invalidated
    if target.caller is not None:
        committed = False
        if not killed:
            try:
                await target.commit()
                committed = True
            except DBAPIError as commit_error:  # its connection was killed
                assert fault in ("kill_before", "kill_after", "commit_lost"), commit_error
        if not committed or killed:
            await target.rollback()
        await target.begin()
        if not committed or killed:
            assert marker is None or not marked(db, marker), "a killed transaction committed"
            assert state(db, case) == before, "a killed transaction committed"
        elif marker is not None and (error is None or name not in NOT_SAVEPOINTED):
            # A failed read on PostgreSQL aborts the caller's transaction:
            # only a write runs under a SAVEPOINT (docs/usage.md).
            assert marked(db, marker), "the caller's earlier write was lost"
    now = state(db, case)
    if target.caller is not None and (not committed or killed):
        pass  # nothing of the caller's transaction committed: checked above
    elif error is None:
        assert now == after, f"completed, but left {now}, not {after}"
    else:
        assert now in (before, after), f"left {now}: neither {before} nor {after}"
    # The next operation on the same saver succeeds.
    probe = case.thread + "-probe"
    await put(target.saver, target.aio, probe, None, "", a="probe")
    found = await call(target.aio, target.saver, "get_tuple", config_of(probe))
    assert found is not None and found.checkpoint["channel_values"] == {"a": "probe"}
    await target.commit()
    await target.begin()
    with db.connect() as conn:
        count = conn.scalar(
            select(func.count()).select_from(checkpoints).where(checkpoints.c.thread_id == probe)
        )
    assert count == 1, "the probe's checkpoint was not stored"
