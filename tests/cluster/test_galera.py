"""sqlsaver on a 3-node MariaDB Galera cluster (``nox -s galera``).

Writers on different nodes run real graphs at once (`workload.graph`), on
threads of their own and on the same threads, sync (PyMySQL) and async
(asyncmy); every thread ends equal to `InMemorySaver`'s for the same turns,
with no checkpoint or write lost or stored twice. Also: `setup()` raced on
all three nodes of a fresh database, TTL sweepers on every node at once,
certification conflicts retried, and a node killed mid-run (last: the
cluster has two nodes after it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import workload
from conftest import SCRIPT, Retries, fresh_database, node_url
from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from sqlsaver import AsyncSQLSaver, SQLSaver, dialects, galera, migrate

NODES = range(3)


def check_threads(database: str, turns: dict[str, int]) -> None:
    """Each thread (read on node 1) equals `InMemorySaver`'s after its
    number of turns: history, checkpoint rows, write rows; no orphans."""
    engine = create_engine(node_url(0, database), poolclass=NullPool)
    with SQLSaver.from_url(node_url(0, database)) as saver, engine.connect() as conn:
        reader = workload.graph(saver)
        for thread_id, count in turns.items():
            expected, checkpoints, writes = workload.in_memory(thread_id, count)
            assert workload.history(reader, thread_id) == expected, thread_id
            assert workload.stored(conn, thread_id) == (checkpoints, writes, 0), thread_id
    engine.dispose()


def run_turns(graphs: list[Any], thread_id: str, turns: int, node_of: Callable[[int], int]) -> None:
    """``turns`` turns of one thread, turn ``t`` on node ``node_of(t)``."""
    for turn in range(turns):
        graph = graphs[node_of(turn)]
        out = graph.invoke(workload.turn_input(thread_id, turn), workload.config(thread_id))
        workload.check_output(out, thread_id, turn)


def savers(database: str, **options: Any) -> list[SQLSaver]:
    return [SQLSaver.from_url(node_url(n, database), **options) for n in NODES]


# -- writers on every node at once ---------------------------------------------


@pytest.mark.parametrize("same_threads", [False, True], ids=["own-threads", "alternating"])
def test_sync_writers_on_every_node(database: str, same_threads: bool, retries: Retries) -> None:
    """Own threads: each node's writers run their own threads. Alternating:
    every thread's turns go node 1, 2, 3, 1, ... (read-your-writes across
    nodes), with all threads running at once."""
    threads_per_node, turns = 4, 4
    on_nodes = savers(database)
    graphs = [workload.graph(s) for s in on_nodes]
    jobs = {}
    for node, i in itertools.product(NODES, range(threads_per_node)):
        thread_id = f"n{node}-{i}"
        node_of = (lambda t: t % 3) if same_threads else (lambda t, node=node: node)
        jobs[thread_id] = node_of
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run_turns, graphs, t, turns, f) for t, f in jobs.items()]
        for future in futures:
            future.result()
    for saver in on_nodes:
        saver.close()
    check_threads(database, dict.fromkeys(jobs, turns))
    print(retries)


@pytest.mark.parametrize("same_threads", [False, True], ids=["own-threads", "alternating"])
async def test_async_writers_on_every_node(
    database: str, same_threads: bool, retries: Retries
) -> None:
    """As the sync test, with `AsyncSQLSaver` on asyncmy, on one event loop."""
    threads_per_node, turns = 3, 4
    on_nodes = [AsyncSQLSaver.from_url(node_url(n, database, "asyncmy")) for n in NODES]
    graphs = [workload.graph(s) for s in on_nodes]

    async def thread(thread_id: str, node: int) -> None:
        for turn in range(turns):
            graph = graphs[turn % 3 if same_threads else node]
            out = await graph.ainvoke(
                workload.turn_input(thread_id, turn), workload.config(thread_id)
            )
            workload.check_output(out, thread_id, turn)

    thread_ids = {f"a{node}-{i}": node for node in NODES for i in range(threads_per_node)}
    await asyncio.gather(*(thread(t, node) for t, node in thread_ids.items()))
    for saver in on_nodes:
        await saver.aclose()
    await asyncio.to_thread(check_threads, database, dict.fromkeys(thread_ids, turns))
    print(retries)


def test_same_threads_concurrently(database: str, retries: Retries) -> None:
    """Every node runs turns on the same threads at the same time. Runs on
    one thread overlap (each forks from the latest checkpoint it read), so
    the history is a tree, not InMemorySaver's line; but every checkpoint
    and write of every turn is stored once, and each turn's own output is
    right. With a TTL, each write also upserts the thread's row: writes of
    one thread on two nodes conflict there, and are retried."""
    threads, turns_per_node = 3, 3
    on_nodes = savers(database, ttl={"default_ttl": 60})
    graphs = [workload.graph(s) for s in on_nodes]
    counter = itertools.count()

    def writer(thread_id: str, node: int) -> None:
        for _ in range(turns_per_node):
            turn = next(counter)  # unique across writers: a tag for its output
            out = graphs[node].invoke(
                workload.turn_input(thread_id, turn), workload.config(thread_id)
            )
            workload.check_output(out, thread_id, turn)

    with ThreadPoolExecutor(threads * 3) as pool:
        futures = [pool.submit(writer, f"s{t}", node) for t in range(threads) for node in NODES]
        for future in futures:
            future.result()
    for saver in on_nodes:
        saver.close()
    total = turns_per_node * 3
    _, checkpoints, writes = workload.in_memory("x", total)
    engine = create_engine(node_url(0, database), poolclass=NullPool)
    with engine.connect() as conn:
        for t in range(threads):
            assert workload.stored(conn, f"s{t}") == (checkpoints, writes, 0)
    engine.dispose()
    print(retries)


# -- certification conflicts ---------------------------------------------------


@pytest.mark.parametrize("aio", [False, True], ids=["pymysql", "asyncmy"])
async def test_certification_conflicts_are_retried(
    database: str, aio: bool, retries: Retries
) -> None:
    """All three nodes write the same rows at the same moment, many times:
    a checkpoint (`put`: on sqlsaver's MySQL engines one multi-statement
    script, BEGIN to COMMIT), then a replacing write (`put_writes` of
    ``__error__``: one AUTOCOMMIT statement). Galera certifies one and
    fails the others with 1213 (at COMMIT, or at whatever statement runs
    when it is aborted), which the runner reruns: no error reaches the
    caller, each row is stored once, and both kinds of write conflicted.
    (The server reruns a conflicting AUTOCOMMIT statement once itself,
    ``wsrep_retry_autocommit=1``, so only a second conflict would reach
    sqlsaver: switched off here, for the runner to show it reruns them.)
    (A write of several statements in a transaction of its own conflicts
    in `test_same_threads_concurrently`.)"""
    rounds = 30
    config: Any = {"configurable": {"thread_id": "conflicts", "checkpoint_ns": ""}}
    metadata: Any = {"source": "loop", "step": 0, "parents": {}}
    checkpoints = []
    for n in range(rounds):
        checkpoint = create_checkpoint(empty_checkpoint(), {}, n)
        # Large values: statements long enough that the nodes' overlap.
        checkpoint["channel_values"] = {"x": n.to_bytes(4, "big") * 100_000}
        checkpoint["channel_versions"] = {"x": f"{n:032}.0"}
        checkpoints.append(checkpoint)
    error = [("__error__", b"boom" * 100_000)]

    def put(saver: Any, checkpoint: Any) -> Any:
        versions = checkpoint["channel_versions"]
        return (saver.aput if aio else saver.put)(config, checkpoint, metadata, versions)

    def put_writes(saver: Any, saved: Any) -> Any:
        return (saver.aput_writes if aio else saver.put_writes)(saved, error, "task")

    # init_command: PyMySQL's and asyncmy's.
    engine_kwargs = {"connect_args": {"init_command": "SET SESSION wsrep_retry_autocommit = 0"}}
    if aio:
        on_nodes: list[Any] = [
            AsyncSQLSaver.from_url(node_url(n, database, "asyncmy"), engine_kwargs=engine_kwargs)
            for n in NODES
        ]

        async def at_once(write: Callable[[Any, Any], Any], items: list[Any]) -> list[Any]:
            return [await asyncio.gather(*(write(s, item) for s in on_nodes)) for item in items]

    else:
        on_nodes = savers(database, engine_kwargs=engine_kwargs)
        pool = ThreadPoolExecutor(len(on_nodes))

        async def at_once(write: Callable[[Any, Any], Any], items: list[Any]) -> list[Any]:
            barrier = threading.Barrier(len(on_nodes), timeout=60)

            def writer(saver: Any) -> list[Any]:
                return [(barrier.wait(), write(saver, item))[1] for item in items]

            results = [pool.submit(writer, s) for s in on_nodes]
            return list(zip(*(r.result() for r in results), strict=True))

    saved = await at_once(put, checkpoints)
    in_puts = retries.count
    await at_once(put_writes, [configs[0] for configs in saved])
    for saver in on_nodes:
        await saver.aclose() if aio else saver.close()
    if not aio:
        pool.shutdown()
    engine = create_engine(node_url(2, database), poolclass=NullPool)
    with engine.connect() as conn:
        counts = conn.execute(
            text(
                "SELECT (SELECT COUNT(*) FROM sqlsaver_checkpoints),"
                " (SELECT COUNT(*) FROM sqlsaver_blobs), (SELECT COUNT(*) FROM sqlsaver_writes)"
            )
        ).one()
    engine.dispose()
    assert tuple(counts) == (rounds, rounds, rounds)
    print(f"{rounds} rounds: {in_puts} retries of puts, {retries.count - in_puts} of writes")
    assert all("1213" in m for m in retries.messages), retries.messages
    assert in_puts > 0 and retries.count > in_puts, "no conflict: the test proved nothing"


# -- setup() on every node at once ---------------------------------------------

# One process per node (as in a deployment; Alembic's own state is also
# per process): each sets up one database per round, at the same moment.
CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from sqlsaver import AsyncSQLSaver, SQLSaver

    async def aset_up(url, schema):
        async with AsyncSQLSaver.from_url(url, schema=schema) as saver:
            await saver.setup()

    start, step, urls = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    for n, arg in enumerate(urls):
        url, _, schema = arg.partition(" schema=")
        time.sleep(max(0.0, start + n * step - time.time()))
        try:
            if "asyncmy" in url:
                asyncio.run(aset_up(url, schema or None))
            else:
                with SQLSaver.from_url(url, schema=schema or None) as saver:
                    saver.setup()
            print("ok", flush=True)
        except Exception as error:
            print(f"round {n}: {type(error).__name__}: {error}"[:400], flush=True)
    """
)


def test_setup_races_on_every_node() -> None:
    """Three processes, one per node, call `setup()` on a fresh database
    at the same moment: sync, async, and mixed. Without a lock that holds
    across the cluster (``GET_LOCK`` does not), they run the migrations at
    once: "Table ... already exists", concurrent-DDL errors, and schemas
    left half-migrated with no version row. The last round sets up a
    ``schema=`` (another database) through URLs of the database ``test``:
    its lock lives in that schema too."""
    mixed = ("pymysql", "asyncmy", "pymysql")
    rounds = [("pymysql",) * 3, ("asyncmy",) * 3, mixed, mixed]
    databases = [fresh_database("race") for _ in rounds]
    start, step = time.time() + 6, 3.0
    plan = list(zip(databases, rounds, strict=True))
    in_schema = len(plan) - 1  # the last round's

    def arg(node: int, n: int, db: str, drivers: tuple[str, ...]) -> str:
        if n < in_schema:
            return node_url(node, db, drivers[node])
        return f"{node_url(node, 'test', drivers[node])} schema={db}"

    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(start), str(step)]
            + [arg(node, n, db, drivers) for n, (db, drivers) in enumerate(plan)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for node in NODES
    ]
    outputs = [child.communicate(timeout=120)[0].splitlines() for child in children]
    assert outputs == [["ok"] * len(rounds)] * 3, outputs
    engine = create_engine(node_url(0, ""), poolclass=NullPool)
    expected = {t.name for t in migrate.target_metadata("mysql").sorted_tables}
    with engine.connect() as conn:
        for db in databases:
            tables = set(conn.execute(text(f"SHOW TABLES FROM {db}")).scalars())
            assert expected | {migrate.VERSION_TABLE} <= tables
            version = conn.execute(text(f"SELECT version_num FROM {db}.{migrate.VERSION_TABLE}"))
            assert version.scalars().all() == [migrate.HEAD]
            lock = conn.execute(text(f"SELECT COUNT(*) FROM {db}.sqlsaver_migration_lock"))
            assert lock.scalar_one() == 0  # released
    engine.dispose()


def test_setup_takes_over_a_dead_holders_lock() -> None:
    """A live holder's row makes `setup()` on another node wait until it is
    deleted. A process that died holding the lock leaves its row; once
    older than `MIGRATION_LOCK_TIMEOUT` it is stale, and `setup()` takes
    the lock over at once (here: a row already expired)."""
    db = fresh_database("stale")
    engine = create_engine(node_url(0, db), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    take = text(f"INSERT INTO {galera.LOCK_TABLE} VALUES ('sqlsaver_migrations', 'x', :expires)")
    with engine.connect() as conn:
        conn.execute(galera._LockStatements.of(None, conn.dialect).create)
        now = conn.execute(text("SELECT UNIX_TIMESTAMP()")).scalar_one()
        conn.execute(take, {"expires": now + 600})  # held, live
    started = time.monotonic()
    with SQLSaver.from_url(node_url(1, db)) as saver, ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(saver.setup)
        time.sleep(1.5)
        assert not waiting.done()
        with engine.connect() as conn:
            conn.execute(text(f"DELETE FROM {galera.LOCK_TABLE}"))  # released
        waiting.result(timeout=10)
    assert time.monotonic() - started >= 1.5
    with engine.connect() as conn:
        conn.execute(text("DROP TABLE sqlsaver_checkpoints"))  # to migrate again
        conn.execute(text(f"DELETE FROM {migrate.VERSION_TABLE}"))
        conn.execute(take, {"expires": now - 1})  # a dead holder's, stale
    started = time.monotonic()
    with SQLSaver.from_url(node_url(2, db)) as saver:
        saver.setup()
    assert time.monotonic() - started < 10
    with engine.connect() as conn:
        assert migrate.current(conn) == migrate.HEAD
        assert conn.execute(text(f"SELECT COUNT(*) FROM {galera.LOCK_TABLE}")).scalar_one() == 0
    engine.dispose()


def test_a_migration_renews_its_lock_after_each_revision() -> None:
    """A migration renews its lock's row after each revision
    (`galera.renew_lock`), so that a long one is not taken for a dead
    holder's. Here the row is made old after each revision, as a long one
    would leave it, and each next revision must have renewed it. (In a
    schema named by a reserved word, ``order``, which `schemas.check_name`
    lets in: the lock's SQL quotes it as SQLAlchemy quotes the tables'.
    MariaDB happens to take a reserved word unquoted before a dot.)"""
    schema = "order"
    admin = create_engine(node_url(0, ""), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    renewed: list[float] = []
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{schema}`"))
        conn.execute(text(f"CREATE DATABASE `{schema}`"))

    # On the saver's node: the row's renewals run there, one after another.
    same_node = create_engine(node_url(1, ""), poolclass=NullPool, isolation_level="AUTOCOMMIT")

    def watch(*_: Any) -> None:
        with same_node.connect() as conn:
            row = conn.execute(
                text(
                    "SET STATEMENT wsrep_sync_wait = 1 FOR SELECT expires_at - UNIX_TIMESTAMP()"
                    f" FROM `{schema}`.{galera.LOCK_TABLE}"
                )
            )
            renewed.extend(row.scalars())
            conn.execute(  # as old as a long revision would leave it
                text(f"UPDATE `{schema}`.{galera.LOCK_TABLE} SET expires_at = UNIX_TIMESTAMP()")
            )

    try:
        with SQLSaver.from_url(node_url(1, "test"), schema=schema) as saver:
            original = galera.renew_lock

            def renew_and_watch(conn: Any) -> None:
                original(conn)
                watch()

            galera.renew_lock = renew_and_watch  # type: ignore[assignment]
            try:
                saver.setup()
            finally:
                galera.renew_lock = original
        with admin.connect() as conn:
            version = conn.execute(
                text(f"SELECT version_num FROM `{schema}`.{migrate.VERSION_TABLE}")
            )
            assert version.scalars().all() == [migrate.HEAD]
            lock = conn.execute(text(f"SELECT COUNT(*) FROM `{schema}`.{galera.LOCK_TABLE}"))
            assert lock.scalar_one() == 0
        # One renewal per revision, each good for the lock's whole timeout.
        assert len(renewed) == len(migrate.revisions()), renewed
        assert all(left > dialects.MIGRATION_LOCK_TIMEOUT - 60 for left in renewed), renewed
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{schema}`"))
        admin.dispose()
        same_node.dispose()


# -- TTL sweepers on every node at once ----------------------------------------

T0 = 1_000_000.0  # an injected clock: the sweepers see the first threads expired


def test_ttl_sweepers_on_every_node(database: str, retries: Retries) -> None:
    """Sweepers on all three nodes at once, a few threads per transaction:
    ``FOR UPDATE SKIP LOCKED`` is local to a node, so they pick the same
    threads and their deletes conflict; the losers rerun and pick others.
    Every expired thread is handled once (the counts add up) and is gone;
    the others are intact."""
    expiring, kept = [f"e{i}" for i in range(36)], [f"k{i}" for i in range(6)]
    ttl = {"default_ttl": 1}
    for thread_ids, now in ((expiring, T0), (kept, T0 + 1000)):
        with SQLSaver.from_url(node_url(0, database), ttl=ttl, clock=lambda now=now: now) as s:
            graph = workload.graph(s)
            for t in thread_ids:
                graph.invoke(workload.turn_input(t, 0), workload.config(t))
    sweepers = savers(database, ttl=ttl, clock=lambda: T0 + 120)
    barrier = threading.Barrier(len(sweepers), timeout=60)

    def sweep(saver: SQLSaver) -> int:
        saver.get_tuple(workload.config("none"))  # connected, schema checked
        barrier.wait()
        handled = 0
        while done := saver.sweep_ttl(limit=1):
            handled += done
        return handled

    with ThreadPoolExecutor(len(sweepers)) as pool:
        handled = list(pool.map(sweep, sweepers))
    for saver in sweepers:
        saver.close()
    print(f"handled per node: {handled}; {retries}")
    assert sum(handled) == len(expiring)
    engine = create_engine(node_url(2, database), poolclass=NullPool)
    with engine.connect() as conn:
        for t in expiring:
            assert workload.stored(conn, t) == (0, 0, 0)
        threads = conn.execute(text("SELECT thread_id FROM sqlsaver_threads")).scalars()
        assert sorted(bytes(t).decode() for t in threads) == sorted(kept)
    engine.dispose()
    check_threads(database, dict.fromkeys(kept, 1))


# -- a node killed mid-run (last: the cluster has two nodes after it) ----------


def test_node_killed_mid_run(database: str, retries: Retries) -> None:
    """Writers on all three nodes; node 3 is killed (``kill -9``) a third
    of the way through. The others stall while the cluster notices (a few
    seconds), then finish, their threads complete and equal to
    InMemorySaver's. Node 3's writers fail with the database's error (no
    connection), and every turn they finished before is stored whole."""
    threads_per_node, turns = 2, 8
    on_nodes = savers(database)
    graphs = [workload.graph(s) for s in on_nodes]
    thread_ids = {f"k{node}-{i}": node for node in NODES for i in range(threads_per_node)}
    finished: dict[str, int] = dict.fromkeys(thread_ids, 0)
    failures: dict[str, BaseException] = {}
    a_third = threading.Event()

    def writer(thread_id: str, node: int) -> None:
        for turn in range(turns):
            try:
                out = graphs[node].invoke(
                    workload.turn_input(thread_id, turn), workload.config(thread_id)
                )
            except Exception as error:
                failures[thread_id] = error
                return
            workload.check_output(out, thread_id, turn)
            finished[thread_id] = turn + 1
            if sum(finished.values()) >= len(thread_ids) * turns // 3:
                a_third.set()

    with ThreadPoolExecutor(len(thread_ids)) as pool:
        futures = [pool.submit(writer, t, node) for t, node in thread_ids.items()]
        assert a_third.wait(120)
        subprocess.run([str(SCRIPT), "kill", "3"], check=True, env=os.environ)
        killed_at = time.monotonic()
        for future in futures:
            future.result()
    print(f"others finished {time.monotonic() - killed_at:.1f} s after the kill; {retries}")
    for saver in on_nodes[:2]:
        saver.close()
    survivors = {t: turns for t, node in thread_ids.items() if node != 2}
    assert {t: finished[t] for t in survivors} == survivors
    assert not {t: failures[t] for t in survivors if t in failures}
    check_threads(database, survivors)
    victims = [t for t, node in thread_ids.items() if node == 2]
    for t in victims:
        error = failures[t]
        assert isinstance(error, OperationalError), repr(error)
        # 2013 Lost connection, 2006 gone away, 2003 cannot connect
        assert error.orig.args[0] in (2003, 2006, 2013), repr(error)
    engine = create_engine(node_url(0, database), poolclass=NullPool)
    with SQLSaver.from_url(node_url(0, database)) as saver, engine.connect() as conn:
        reader = workload.graph(saver)
        for t in victims:
            expected, checkpoints, _ = workload.in_memory(t, finished[t])
            got = workload.history(reader, t)
            assert got[len(got) - len(expected) :] == expected, t  # then a part of one turn
            assert workload.stored(conn, t)[2] == 0
    engine.dispose()
