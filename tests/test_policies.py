"""Shallow mode and thread TTL, on every backend, sync (`SQLSaver`) and async
(`AsyncSQLSaver`), against the raw tables and LangGraph's `InMemorySaver`.

Time is an injected clock (``clock=``) except where the database's own clock
is the subject. Covered:

* shallow ``put``: one checkpoint per (thread, namespace) and exactly the
  blobs it references after many puts that change some channels (one channel
  emptied); the latest checkpoint's pending writes, also those stored before
  its ``put``; ``get_tuple`` of an older id is None; ``list`` one per namespace;
* a shallow ``put`` from elsewhere landing between a read's statements: the
  read shows whole checkpoints (also on MySQL at READ COMMITTED);
* real graphs on a shallow saver (interrupt/resume, a subgraph, a subgraph
  interrupting and resumed from the parent, a ``Send`` fan-out): same results
  as `InMemorySaver`, storage flat over turns, finished subgraph calls gone;
* a `DeltaChannel` graph on a shallow saver: same state as `InMemorySaver`
  over many turns, checkpoints bounded by the snapshot frequency;
* TTL: expired threads invisible to ``get_tuple``/``list`` before any sweep;
  writes (``put``, ``put_writes``, ``copy_thread``) move expiry on;
  ``refresh_on_read`` (and no refresh without it); ``set_thread_ttl``
  (never, shorter, back to default); ``sweep_ttl`` deletes every row of
  expired threads only, returns the count, honours ``sweep_limit``/``limit``
  across batches; ``keep_latest``: latest per namespace visible, the sweep
  prunes, the graph resumes like `InMemorySaver`;
* two sweepers at once (threads, ``asyncio.gather``): each thread handled once;
* the background sweeper (start, stop, ``close``/``aclose``) and errors;
* ``python -m sqlsaver sweep`` (both strategies, ``--limit``, sync and async URL);
* the database clock by default, agreeing with the host's clock.
"""

import asyncio
import operator
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypedDict

import pytest
from helpers import call, norm
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt
from sqlalchemy import Engine, create_engine, delete, event, func, insert, select, update

from sqlsaver import AsyncSQLSaver, SQLSaver
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import threads as T
from sqlsaver.models import writes as W

T0 = 1_000_000.0  # the injected clock's start, seconds since the epoch
TABLES = {"checkpoints": C, "blobs": B, "writes": W, "threads": T}

# -- fixtures and helpers -----------------------------------------------------


@pytest.fixture
async def make(backend: Any, aio: bool) -> Any:
    """``make(**options)``: a saver of the test's kind on its own engine,
    closed when the test ends."""
    made: list[Any] = []

    def factory(**options: Any) -> Any:
        cls, url = (AsyncSQLSaver, backend.async_url) if aio else (SQLSaver, backend.sync_url)
        made.append(cls.from_url(url, **options))
        return made[-1]

    yield factory
    for saver in made:
        if aio:
            await saver.aclose()
        else:
            saver.close()


@pytest.fixture
def db(backend: Any) -> Iterator[Engine]:
    """A plain engine for looking at (and arranging) the raw tables."""
    engine = create_engine(backend.sync_url)
    yield engine
    engine.dispose()


@pytest.fixture
def ttl_db(db: Engine) -> Engine:
    """`db`, with no other test's thread left to expire: sweeps see the
    whole database, so counts are exact only when its threads are ours."""
    with db.begin() as conn:
        conn.execute(delete(T))
    return db


class Clock:
    """An injectable clock: ``clock=Clock()``, then move ``.now``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cfg(thread_id: str, **configurable: Any) -> dict:
    return {"configurable": {"thread_id": thread_id, **configurable}}


def rows(db: Engine, thread_ids: str | list[str]) -> dict[str, int]:
    """Stored rows of these threads, per table."""
    ids = [thread_ids] if isinstance(thread_ids, str) else thread_ids
    with db.connect() as conn:
        return {
            name: conn.execute(
                select(func.count()).select_from(t).where(t.c.thread_id.in_(ids))
            ).scalar_one()
            for name, t in TABLES.items()
        }


def expires_at(db: Engine, thread_id: str) -> float | None | str:
    with db.connect() as conn:
        found = conn.execute(select(T.c.expires_at).where(T.c.thread_id == thread_id)).all()
    return found[0][0] if found else "no row"


def stored_namespaces(db: Engine, thread_id: str, tables: tuple = (C, B, W)) -> set[str]:
    with db.connect() as conn:
        return {
            ns
            for t in tables
            for ns in conn.execute(
                select(t.c.checkpoint_ns).where(t.c.thread_id == thread_id).distinct()
            ).scalars()
        }


async def seed(aio: bool, saver: Any, thread_id: str, n: int = 2) -> list[dict]:
    """``n`` checkpoints on a thread, channel ``x`` changing each time (a
    list: a blob row, not a small value kept in the checkpoint), each with
    a pending write; metadata ``tag`` is the thread id."""
    config, version, configs = cfg(thread_id, checkpoint_ns=""), None, []
    for step in range(n):
        version = saver.get_next_version(version, None)
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"], checkpoint["channel_versions"] = {"x": [step]}, {"x": version}
        metadata = {"source": "loop", "step": step, "tag": thread_id}
        config = await call(aio, saver, "put", config, checkpoint, metadata, {"x": version})
        await call(aio, saver, "put_writes", config, [("x", step + 1)], f"task-{step}")
        configs.append(config)
    return configs


async def seen(aio: bool, saver: Any, thread_id: str, tag: str | None = None) -> int:
    """How many checkpoints of the thread the saver shows (0: none), checking
    that ``get_tuple``, ``list`` of the thread and ``list`` of all agree
    (``tag``: the seeded thread's id, for a copy)."""
    latest = await call(aio, saver, "get_tuple", cfg(thread_id))
    listed = await call(aio, saver, "list", cfg(thread_id))
    everywhere = await call(aio, saver, "list", None, filter={"tag": tag or thread_id})
    assert (latest is None) == (not listed)
    assert [c.config for c in listed] == [
        c.config for c in everywhere if c.config["configurable"]["thread_id"] == thread_id
    ]
    return len(listed)


def clone(db: Engine, template: str, thread_ids: list[str], expiry: float) -> None:
    """Copy a thread's rows to many new threads expiring at ``expiry``: a
    fast way to a few hundred real threads."""
    with db.begin() as conn:
        for table in (C, B, W):
            found = [
                dict(r)
                for r in conn.execute(select(table).where(table.c.thread_id == template)).mappings()
            ]
            if found:
                conn.execute(
                    insert(table), [{**r, "thread_id": t} for t in thread_ids for r in found]
                )
        conn.execute(
            insert(T),
            [{"thread_id": t, "expires_at": expiry, "updated_at": 0.0} for t in thread_ids],
        )


async def until(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# -- graphs -------------------------------------------------------------------


class Steps(TypedDict, total=False):
    steps: Annotated[list, operator.add]
    answer: str


class Log(Steps, total=False):
    log: Annotated[list, operator.add]


class Fan(TypedDict, total=False):
    n: int
    results: Annotated[list, operator.add]
    total: int


def line(runs: Counter, state: type, *nodes: tuple[str, Any]) -> StateGraph:
    """A straight line of nodes, counting runs (a subgraph node is not counted)."""
    builder = StateGraph(state)
    for name, fn in nodes:

        def node(s: Any, name: str = name, fn: Any = fn) -> Any:
            runs[name] += 1
            return fn(s)

        builder.add_node(name, fn if hasattr(fn, "invoke") else node)
    names = [name for name, _ in nodes]
    for a, b in zip([START, *names], [*names, END], strict=True):
        builder.add_edge(a, b)
    return builder


def ask(key: str) -> Any:
    return lambda s: {"answer": interrupt({"seen": s[key][-3:]}), key: ["ask"]}


def interrupt_graph(runs: Counter) -> StateGraph:
    return line(
        runs,
        Log,
        ("prepare", lambda s: {"log": ["prepare"]}),
        ("ask", ask("log")),
        ("finish", lambda s: {"log": [f"finish:{s['answer']}"]}),
    )


def subgraph_graph(runs: Counter, pause: bool) -> StateGraph:
    middle = [("sub_ask", ask("steps"))] if pause else []
    child = line(
        runs,
        Steps,
        ("sub_a", lambda s: {"steps": ["sub_a"]}),
        *middle,
        ("sub_b", lambda s: {"steps": [f"sub_b:{s.get('answer')}"]}),
    ).compile()
    return line(
        runs,
        Log,
        ("pre", lambda s: {"log": ["pre"]}),
        ("child", child),
        ("post", lambda s: {"log": [f"post:{s.get('answer')}"]}),
    )


def fan_graph(runs: Counter) -> StateGraph:
    def work(arg: dict) -> dict:
        runs["work"] += 1
        return {"results": [arg["i"] ** 2]}

    builder = StateGraph(Fan)
    builder.add_node("work", work)
    builder.add_node("done", lambda s: {"total": sum(s["results"])})
    builder.add_conditional_edges(
        START, lambda s: [Send("work", {"i": i}) for i in range(s["n"])], ["work"]
    )
    builder.add_edge("work", "done")
    builder.add_edge("done", END)
    return builder


GRAPHS = {
    "interrupt": interrupt_graph,
    "subgraph": lambda runs: subgraph_graph(runs, pause=False),
    "subgraph_interrupt": lambda runs: subgraph_graph(runs, pause=True),
    "fan_out": fan_graph,
}


async def snapshot(aio: bool, graph: Any, config: dict) -> Any:
    s = await call(aio, graph, "get_state", config, subgraphs=True)
    tasks = [(t.name, t.state and t.state.values, t.interrupts) for t in s.tasks]
    return norm((s.values, s.next, tasks))


# Storage is compared after each turn with ``durability="sync"``, so that
# every save of the turn has landed when the rows are counted.
SYNC = {"durability": "sync"}


async def graph_turn(aio: bool, kind: str, graph: Any, config: dict, turn: int) -> Any:
    """One turn of a graph: invoke, and where it pauses, look and resume."""
    if kind == "fan_out":
        return norm([await call(aio, graph, "invoke", {"n": turn + 3}, config, **SYNC)])
    start = {"log": [f"turn{turn}"], "steps": ["s"]}
    first = await call(aio, graph, "invoke", start, config, **SYNC)
    if kind == "subgraph":
        return norm([first])
    paused = await snapshot(aio, graph, config)
    resumed = await call(aio, graph, "invoke", Command(resume=f"ok{turn}"), config, **SYNC)
    return norm([first, paused, resumed])


def delta_graph(freq: int) -> StateGraph:
    """A loop ticking until ``n`` reaches ``goal``; each tick fans out to two
    nodes writing the delta channel in one superstep."""

    def extend(state: list, writes: list) -> list:
        return [*state, *(item for write in writes for item in write)]

    class State(TypedDict, total=False):
        items: Annotated[list, DeltaChannel(extend, snapshot_frequency=freq)]
        n: int
        goal: int

    builder = StateGraph(State)
    builder.add_node("tick", lambda s: {"items": [f"t{s.get('n', 0)}"], "n": s.get("n", 0) + 1})
    builder.add_node("left", lambda s: {"items": [f"L{s['n']}"]})
    builder.add_node("right", lambda s: {"items": [f"R{s['n']}"]})
    builder.add_edge(START, "tick")
    builder.add_conditional_edges(
        "tick", lambda s: ["left", "right"] if s["n"] < s["goal"] else END
    )
    builder.add_edge("left", "tick")
    builder.add_edge("right", "tick")
    return builder


# -- shallow ------------------------------------------------------------------

EMPTIED = object()


def changes(step: int) -> dict[str, Any]:
    """What a step writes: ``a`` always, ``b`` every third step, ``c`` at
    step 0, then emptied at step 7 (a new version, no value)."""
    out: dict[str, Any] = {"a": step}
    if step % 3 == 0:
        out["b"] = list(range(step))
    if step in (0, 7):
        out["c"] = "x" if step == 0 else EMPTIED
    return out


async def test_shallow_put_keeps_latest_checkpoint_and_its_blobs(
    aio: bool, make: Any, db: Engine, thread_id: str
) -> None:
    saver = make(shallow=True)
    spaces = ("", "inner:1")
    heads = {ns: cfg(thread_id, checkpoint_ns=ns) for ns in spaces}
    versions: dict[str, dict] = {ns: {} for ns in spaces}
    values: dict[str, dict] = {ns: {} for ns in spaces}
    ids: dict[str, list] = {ns: [] for ns in spaces}
    for step in range(12):
        for ns in spaces:
            for channel, value in changes(step).items():
                versions[ns][channel] = saver.get_next_version(versions[ns].get(channel), None)
                if value is EMPTIED:
                    del values[ns][channel]
                else:
                    values[ns][channel] = value
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = dict(values[ns])
            checkpoint["channel_versions"] = dict(versions[ns])
            new_versions = {ch: versions[ns][ch] for ch in changes(step)}
            # LangGraph may store a task's writes before their checkpoint.
            early = cfg(thread_id, checkpoint_ns=ns, checkpoint_id=checkpoint["id"])
            await call(aio, saver, "put_writes", early, [("a", "early")], f"early-{step}")
            metadata = {"source": "loop", "step": step}
            heads[ns] = await call(aio, saver, "put", heads[ns], checkpoint, metadata, new_versions)
            await call(
                aio, saver, "put_writes", heads[ns], [("b", "l"), ("a", "l")], f"late-{step}"
            )
            ids[ns].append(checkpoint["id"])

    with db.connect() as conn:

        def stored(t: Any, *columns: str) -> set[tuple]:
            picked = select(*(t.c[c] for c in columns)).where(t.c.thread_id == thread_id)
            return {tuple(r) for r in conn.execute(picked)}

        assert stored(C, "checkpoint_ns", "checkpoint_id") == {(ns, ids[ns][-1]) for ns in spaces}
        # `c`'s old value went when its new (empty) version replaced it;
        # `a`'s (a number) is kept in the checkpoint itself.
        assert stored(B, "checkpoint_ns", "channel", "version") == {
            (ns, "b", versions[ns]["b"]) for ns in spaces
        }
        assert stored(W, "checkpoint_ns", "checkpoint_id", "task_id") == {
            (ns, ids[ns][-1], task) for ns in spaces for task in ("early-11", "late-11")
        }
    for ns in spaces:
        latest = await call(aio, saver, "get_tuple", cfg(thread_id, checkpoint_ns=ns))
        assert latest.checkpoint["id"] == ids[ns][-1]
        assert latest.checkpoint["channel_values"] == {"a": 11, "b": list(range(9))}
        assert sorted(latest.pending_writes) == [
            ("early-11", "a", "early"),
            ("late-11", "a", "l"),
            ("late-11", "b", "l"),
        ]
        for old in ids[ns][:-1:4]:
            old_config = cfg(thread_id, checkpoint_ns=ns, checkpoint_id=old)
            assert await call(aio, saver, "get_tuple", old_config) is None
        only = await call(aio, saver, "list", cfg(thread_id, checkpoint_ns=ns))
        assert [c.checkpoint["id"] for c in only] == [ids[ns][-1]]
    listed = await call(aio, saver, "list", cfg(thread_id))
    assert sorted(
        (c.config["configurable"]["checkpoint_ns"], c.checkpoint["id"]) for c in listed
    ) == (sorted((ns, ids[ns][-1]) for ns in spaces))


@pytest.mark.parametrize("kind", list(GRAPHS))
async def test_shallow_graphs_match_in_memory_and_stay_flat(
    aio: bool, make: Any, db: Engine, thread_id: str, kind: str
) -> None:
    saver, turns = make(shallow=True), 4
    outcomes, storage = [], []
    for checkpointer in (saver, InMemorySaver()):
        runs: Counter = Counter()
        graph = GRAPHS[kind](runs).compile(checkpointer=checkpointer)
        config = cfg(thread_id)
        results, left_over = [], set()
        for turn in range(turns):
            results.append(await graph_turn(aio, kind, graph, config, turn))
            if checkpointer is saver:
                storage.append(rows(db, thread_id))
                # Finished subgraph calls are gone; only the root namespace stays.
                assert stored_namespaces(db, thread_id, (C, B, W)) == {""}
                # Writes saved in the background after the turn's last put may
                # belong to pruned checkpoints, but the next turn's puts clear
                # them: they never pile up.
                with db.connect() as conn:
                    head = conn.execute(
                        select(C.c.checkpoint_id).where(C.c.thread_id == thread_id)
                    ).scalar_one()
                    written = conn.execute(
                        select(W.c.checkpoint_id).where(W.c.thread_id == thread_id)
                    ).scalars()
                    orphans = {cid for cid in written if cid < head}
                    assert not orphans & left_over
                    left_over = orphans
                assert len(await call(aio, graph, "get_state_history", config)) == 1
        outcomes.append((results, await snapshot(aio, graph, config), dict(runs)))
    assert outcomes[0] == outcomes[1]
    # Flat: the same rows after every turn (writes: see above).
    flat = [(s["checkpoints"], s["blobs"], s["threads"]) for s in storage]
    assert flat[0][0] == 1 and flat == [flat[0]] * turns, storage


@pytest.mark.parametrize("read", ["latest", "by id", "list"])
async def test_shallow_read_racing_a_put_shows_whole_checkpoints(
    aio: bool, make: Any, backend: Any, thread_id: str, read: str
) -> None:
    """A shallow `put` from elsewhere lands between a read's statements (on
    SQLite and MySQL: the checkpoints, then their writes and values), and
    prunes the checkpoint just read with its values: the read shows the old
    checkpoint or the new one (by id: the old one or none), each whole,
    never one with its channel values gone."""
    await read_racing_a_put(aio, make(shallow=True), backend, thread_id, read)


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
async def test_shallow_read_racing_a_put_on_mysql_read_committed(
    aio: bool, make: Any, backend: Any, db: Engine, thread_id: str
) -> None:
    """The same on a MySQL server whose sessions default to READ COMMITTED,
    where each statement of a transaction would see its own state."""
    with db.connect() as conn:
        # MariaDB before 11.1 knows the variable by its older name only.
        variable = "tx_isolation" if db.dialect.is_mariadb else "transaction_isolation"
        (level,) = conn.exec_driver_sql(f"SELECT @@global.{variable}").one()
        conn.exec_driver_sql("SET GLOBAL TRANSACTION ISOLATION LEVEL READ COMMITTED")
        try:
            reader = make(shallow=True)  # its connections open at READ COMMITTED
            await read_racing_a_put(aio, reader, backend, thread_id, "latest")
        finally:
            restored = level.replace("-", " ")
            conn.exec_driver_sql(f"SET GLOBAL TRANSACTION ISOLATION LEVEL {restored}")


async def read_racing_a_put(
    aio: bool, reader: Any, backend: Any, thread_id: str, read: str
) -> None:
    """Read (``read``) a thread of one checkpoint while a shallow `put`
    lands between the read's first two statements, and check what shows."""
    (first,) = await seed(aio, reader, thread_id, n=1)
    writer = SQLSaver.from_url(backend.sync_url, shallow=True)
    second = empty_checkpoint()
    version = writer.get_next_version(writer.get_next_version(None, None), None)
    second["channel_values"], second["channel_versions"] = {"x": ["new"]}, {"x": version}
    expected = {first["configurable"]["checkpoint_id"]: {"x": [0]}, second["id"]: {"x": ["new"]}}
    selects, raced = [], []

    def put_before_the_second_select(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if raced or not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            return
        selects.append(sql)
        if len(selects) == 2:
            raced.append(True)  # before the put: its own statements come here too
            writer.put(cfg(thread_id, checkpoint_ns=""), second, {"step": 1}, {"x": version})

    config = first if read == "by id" else cfg(thread_id)
    event.listen(Engine, "before_cursor_execute", put_before_the_second_select)
    try:
        if read == "list":
            shown = await call(aio, reader, "list", config)
        else:
            shown = [await call(aio, reader, "get_tuple", config)]
    finally:
        event.remove(Engine, "before_cursor_execute", put_before_the_second_select)
        writer.close()
    # PostgreSQL reads a checkpoint with its writes and values in one statement.
    assert raced == ([] if backend.name == "postgres" else [True])
    assert shown, "list shows the old checkpoint or the new one"
    for found in shown:
        if found is None:
            assert read == "by id", "get_tuple of the latest shows one or the other"
            continue  # the put pruned it
        assert found.checkpoint["channel_values"] == expected[found.checkpoint["id"]]


async def test_shallow_drops_writes_that_arrive_after_their_checkpoint(
    aio: bool, make: Any, db: Engine, thread_id: str
) -> None:
    saver = make(shallow=True)
    first, _ = await seed(aio, saver, thread_id, n=2)  # the second put pruned the first
    await call(aio, saver, "put_writes", first, [("x", "late")], "late-task")
    (latest,) = await seed(aio, saver, thread_id, n=1)
    with db.connect() as conn:
        kept = conn.execute(select(W.c.checkpoint_id).where(W.c.thread_id == thread_id)).scalars()
        assert set(kept) == {latest["configurable"]["checkpoint_id"]}


async def test_shallow_drops_a_call_stored_after_its_root_was_pruned(
    aio: bool, make: Any, db: Engine, thread_id: str
) -> None:
    saver = make(shallow=True)
    (root,) = await seed(aio, saver, thread_id, n=1)
    late = empty_checkpoint()  # the subgraph call's last checkpoint, made from `root`...
    await seed(aio, saver, thread_id, n=1)  # ...while the parent moves on
    metadata = {"source": "loop", "step": 0, "parents": {"": root["configurable"]["checkpoint_id"]}}
    await call(aio, saver, "put", cfg(thread_id, checkpoint_ns="child:1"), late, metadata, {})
    await seed(aio, saver, thread_id, n=1)
    assert stored_namespaces(db, thread_id) == {""}


async def test_shallow_subgraph_paused_keeps_its_call(
    aio: bool, make: Any, db: Engine, thread_id: str
) -> None:
    """While a subgraph is paused, its call's namespace (one checkpoint,
    with the interrupt) stays, and resuming from the parent works."""
    saver = make(shallow=True)
    outcomes, counts = [], []
    for checkpointer in (saver, InMemorySaver()):
        graph = GRAPHS["subgraph_interrupt"](Counter()).compile(checkpointer=checkpointer)
        config = cfg(thread_id)
        for turn in range(3):
            await call(aio, graph, "invoke", {"log": [f"turn{turn}"]}, config, **SYNC)
            if checkpointer is saver:
                listed = await call(aio, saver, "list", cfg(thread_id))
                counts.append(
                    Counter(c.config["configurable"]["checkpoint_ns"].split(":")[0] for c in listed)
                )
                assert rows(db, thread_id)["checkpoints"] == 2
            paused = await snapshot(aio, graph, config)
            outcomes.append(paused)
            resumed = await call(aio, graph, "invoke", Command(resume=turn), config, **SYNC)
            outcomes.append(norm(resumed))
    assert outcomes[:6] == outcomes[6:]
    assert counts == [{"": 1, "child": 1}] * 3


async def test_shallow_delta_channel_state_and_bounded_storage(
    aio: bool, make: Any, db: Engine, thread_id: str
) -> None:
    freq, config = 3, cfg(thread_id)
    saver = make(shallow=True)
    graph = delta_graph(freq).compile(checkpointer=saver)
    reference = delta_graph(freq).compile(checkpointer=InMemorySaver())
    kept = []
    for turn, goal in enumerate([3, 7, 12, 14, 19, 25, 28, 33]):
        for g in (graph, reference):
            await call(aio, g, "invoke", {"goal": goal, "items": [f"turn{turn}"]}, config)
        mine, theirs = [await call(aio, g, "get_state", config) for g in (graph, reference)]
        assert (mine.values, mine.next) == (theirs.values, theirs.next)
        kept.append(rows(db, thread_id)["checkpoints"])
    assert len(mine.values["items"]) > 60
    # Ancestors back to the nearest snapshot are kept, and no more.
    assert max(kept) <= freq + 1 and max(kept) > 1, kept


# -- TTL ------------------------------------------------------------------------


async def test_expired_threads_are_invisible_and_writes_move_expiry(
    aio: bool, make: Any, ttl_db: Engine, thread_id: str
) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 10}, clock=clock)
    old, live, copy = thread_id, f"{thread_id}-live", f"{thread_id}-copy"
    old_configs = await seed(aio, saver, old)
    clock.now = T0 + 300
    live_configs = await seed(aio, saver, live)
    assert (expires_at(ttl_db, old), expires_at(ttl_db, live)) == (T0 + 600, T0 + 900)

    clock.now = T0 + 599
    assert (await seen(aio, saver, old), await seen(aio, saver, live)) == (2, 2)
    clock.now = T0 + 600
    assert (await seen(aio, saver, old), await seen(aio, saver, live)) == (0, 2)
    assert await call(aio, saver, "get_tuple", old_configs[0]) is None
    assert rows(ttl_db, old)["checkpoints"] == 2  # invisible, not yet swept

    # put_writes moves expiry on; so does a copy, for its target.
    clock.now = T0 + 800
    await call(aio, saver, "put_writes", live_configs[-1], [("x", "more")], "task-late")
    assert expires_at(ttl_db, live) == T0 + 1400
    clock.now = T0 + 1000
    await call(aio, saver, "copy_thread", live, copy)
    assert expires_at(ttl_db, copy) == T0 + 1600
    clock.now = T0 + 1399
    assert (await seen(aio, saver, live), await seen(aio, saver, copy, live)) == (2, 2)
    clock.now = T0 + 1400
    assert (await seen(aio, saver, live), await seen(aio, saver, copy, live)) == (0, 2)
    # A put on an expired thread brings it back (it is a write).
    clock.now = T0 + 2000
    await seed(aio, saver, old, n=1)
    assert expires_at(ttl_db, old) == T0 + 2600 and await seen(aio, saver, old) == 3


@pytest.mark.parametrize("refresh", [True, False], ids=["refresh_on_read", "no_refresh"])
async def test_refresh_on_read(
    aio: bool, make: Any, ttl_db: Engine, thread_id: str, refresh: bool
) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 10, "refresh_on_read": refresh}, clock=clock)
    configs = await seed(aio, saver, thread_id)
    clock.now = T0 + 500
    assert (await call(aio, saver, "get_tuple", configs[0])).checkpoint["id"] == (
        configs[0]["configurable"]["checkpoint_id"]
    )
    assert expires_at(ttl_db, thread_id) == (T0 + 1100 if refresh else T0 + 600)
    clock.now = T0 + 700
    assert await seen(aio, saver, thread_id) == (2 if refresh else 0)
    # Reading an expired thread does not bring it back.
    clock.now = T0 + 5000
    assert await call(aio, saver, "get_tuple", cfg(thread_id)) is None
    assert expires_at(ttl_db, thread_id) == (T0 + 1300 if refresh else T0 + 600)


async def test_set_thread_ttl(aio: bool, make: Any, ttl_db: Engine, thread_id: str) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 10}, clock=clock)
    pinned, short, reverted, plain = (f"{thread_id}-{n}" for n in ("pin", "short", "rev", "plain"))
    configs = {t: await seed(aio, saver, t) for t in (pinned, short, reverted, plain)}
    await call(aio, saver, "set_thread_ttl", pinned, None)
    await call(aio, saver, "set_thread_ttl", short, 1)
    await call(aio, saver, "set_thread_ttl", reverted, 1)
    await call(aio, saver, "set_thread_ttl", reverted, "default")
    assert [expires_at(ttl_db, t) for t in (pinned, short, reverted, plain)] == [
        None,
        T0 + 60,
        T0 + 600,
        T0 + 600,
    ]
    # The thread's own TTL outlives writes: they move expiry by it.
    clock.now = T0 + 30
    for t in (pinned, short):
        await call(aio, saver, "put_writes", configs[t][-1], [("x", 0)], "more")
    assert (expires_at(ttl_db, pinned), expires_at(ttl_db, short)) == (None, T0 + 90)
    clock.now = T0 + 90
    assert [await seen(aio, saver, t) for t in (pinned, short, reverted, plain)] == [2, 0, 2, 2]
    clock.now = T0 + 10**9
    assert [await seen(aio, saver, t) for t in (pinned, short, reverted, plain)] == [2, 0, 0, 0]
    before = rows(ttl_db, pinned)
    assert await call(aio, saver, "sweep_ttl") == 3
    assert rows(ttl_db, pinned) == before
    for bad in (0, -1, float("inf"), "forever"):
        with pytest.raises(ValueError, match="TTL is a positive number"):
            await call(aio, saver, "set_thread_ttl", pinned, bad)


async def test_sweep_deletes_expired_threads_only(
    aio: bool, make: Any, ttl_db: Engine, thread_id: str
) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 10}, clock=clock)
    old, live = thread_id, f"{thread_id}-live"
    await seed(aio, saver, old, n=3)
    clock.now = T0 + 300
    await seed(aio, saver, live)
    clock.now = T0 + 600
    assert min(rows(ttl_db, old).values()) > 0
    before = rows(ttl_db, live)
    assert await call(aio, saver, "sweep_ttl") == 1
    assert rows(ttl_db, old) == {"checkpoints": 0, "blobs": 0, "writes": 0, "threads": 0}
    assert rows(ttl_db, live) == before
    assert await call(aio, saver, "sweep_ttl") == 0


async def test_sweep_limits(aio: bool, make: Any, ttl_db: Engine, thread_id: str) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 1, "sweep_limit": 2}, clock=clock)
    await seed(aio, saver, thread_id, n=1)
    clock.now = T0 + 30
    few = [f"{thread_id}-{i}" for i in range(5)]
    clone(ttl_db, thread_id, few, expiry=T0)
    assert await call(aio, saver, "sweep_ttl") == 2  # sweep_limit
    assert await call(aio, saver, "sweep_ttl", limit=1) == 1
    assert await call(aio, saver, "sweep_ttl", limit=10) == 2
    assert await call(aio, saver, "sweep_ttl") == 0
    assert rows(ttl_db, few)["checkpoints"] == 0 and rows(ttl_db, thread_id)["threads"] == 1
    # More than one transaction (100 threads each).
    many = [f"{thread_id}-many-{i}" for i in range(250)]
    clone(ttl_db, thread_id, many, expiry=T0)
    progress: list[int] = []
    assert await call(aio, saver, "sweep_ttl", 150, progress.append) == 150
    assert progress == [100, 150]
    assert await call(aio, saver, "sweep_ttl", limit=1000) == 100
    assert rows(ttl_db, many) == {"checkpoints": 0, "blobs": 0, "writes": 0, "threads": 0}


async def test_keep_latest_strategy_with_a_paused_subgraph(
    aio: bool, make: Any, ttl_db: Engine, thread_id: str
) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 10, "strategy": "keep_latest"}, clock=clock)
    config, graphs = cfg(thread_id), {}
    for checkpointer in (saver, InMemorySaver()):
        graph = graphs[checkpointer is saver] = GRAPHS["subgraph_interrupt"](Counter()).compile(
            checkpointer=checkpointer
        )
        await call(aio, graph, "invoke", {"log": ["one"]}, config)
        await call(aio, graph, "invoke", Command(resume="first"), config)
        await call(aio, graph, "invoke", {"log": ["two"]}, config)  # paused in the subgraph
    paused = await snapshot(aio, graphs[True], config)
    assert paused == await snapshot(aio, graphs[False], config)
    before = rows(ttl_db, thread_id)
    all_ns = {
        c.config["configurable"]["checkpoint_ns"] for c in await call(aio, saver, "list", config)
    }
    assert len(all_ns) == 3  # root, the finished call, the paused call

    clock.now = T0 + 600  # expired: only the latest checkpoint per namespace shows
    listed = await call(aio, saver, "list", config)
    assert sorted(c.config["configurable"]["checkpoint_ns"] for c in listed) == sorted(all_ns)
    assert len(await call(aio, graphs[True], "get_state_history", config)) == 1
    assert await snapshot(aio, graphs[True], config) == paused
    assert rows(ttl_db, thread_id) == before

    assert await call(aio, saver, "sweep_ttl") == 1
    assert rows(ttl_db, thread_id)["checkpoints"] == 2  # root and the paused call
    assert expires_at(ttl_db, thread_id) is None
    assert await snapshot(aio, graphs[True], config) == paused
    results = [
        norm(await call(aio, graphs[mine], "invoke", Command(resume="second"), config))
        for mine in (True, False)
    ]
    assert results[0] == results[1] and results[0]["log"][-1] == "post:second"
    assert expires_at(ttl_db, thread_id) == T0 + 1200  # written again: expiry moves on


async def race_sweepers(aio: bool, make: Any, db: Engine, thread_id: str, rounds: int) -> None:
    """Rounds of 300 expired threads swept by two savers (own engines) at
    once: in threads (sync), or with ``asyncio.gather`` (async)."""
    clock = Clock()
    savers = [make(ttl={"default_ttl": 10}, clock=clock) for _ in range(2)]
    await seed(aio, savers[0], thread_id, n=2)
    for saver in savers:  # connected, schema checked: the sweeps start together
        assert await call(aio, saver, "sweep_ttl") == 0
    start = threading.Barrier(2)

    def sweep(saver: SQLSaver) -> int:
        start.wait()
        return saver.sweep_ttl()

    for n in range(rounds):
        expired = [f"{thread_id}-{n}-{i}" for i in range(300)]
        clone(db, thread_id, expired, expiry=T0 - 1)
        if aio:
            handled = await asyncio.gather(*(s.asweep_ttl() for s in savers))
        else:
            with ThreadPoolExecutor(2) as pool:
                handled = list(pool.map(sweep, savers))
        assert sum(handled) == 300, handled  # each thread handled once
        assert rows(db, expired) == {"checkpoints": 0, "blobs": 0, "writes": 0, "threads": 0}
    assert rows(db, thread_id)["checkpoints"] == 2  # not expired


async def test_concurrent_sweepers_share_the_work(
    aio: bool, make: Any, ttl_db: Engine, thread_id: str
) -> None:
    """Two sweepers at once, three rounds: each expired thread is handled by
    exactly one, and neither fails (a deadlock victim's batch runs again)."""
    await race_sweepers(aio, make, ttl_db, thread_id, rounds=3)


async def test_background_sweeper(aio: bool, make: Any, ttl_db: Engine, thread_id: str) -> None:
    clock = Clock()
    saver = make(ttl={"default_ttl": 1, "sweep_interval_minutes": 0.001}, clock=clock)
    first, second = thread_id, f"{thread_id}-2"
    await seed(aio, saver, first)
    clock.now = T0 + 60
    worker = saver.start_ttl_sweeper()
    await until(lambda: rows(ttl_db, first)["threads"] == 0)
    with pytest.raises(RuntimeError, match="already running"):
        saver.start_ttl_sweeper(0.001)
    # It keeps sweeping, every interval.
    await seed(aio, saver, second)
    clock.now = T0 + 120
    await until(lambda: rows(ttl_db, second)["threads"] == 0)
    assert rows(ttl_db, [first, second])["checkpoints"] == 0
    if aio:
        assert await saver.stop_ttl_sweeper() is None and worker.done()
        worker = saver.start_ttl_sweeper(interval_minutes=0.001)
        await saver.aclose()
        assert worker.done()
    else:
        assert saver.stop_ttl_sweeper(timeout=5) is True and not worker.is_alive()
        worker = saver.start_ttl_sweeper(interval_minutes=0.001)
        saver.close()
        assert not worker.is_alive()


BAD_TTLS = [
    ({"default_ttl": 5, "sweep_every": 1}, "unknown ttl settings.*sweep_every"),
    ({"default_ttl": -1}, "default_ttl must be a positive"),
    ({"default_ttl": float("nan")}, "default_ttl must be a positive"),
    ({"default_ttl": 5, "strategy": "archive"}, "strategy must be 'delete' or 'keep_latest'"),
    ({"default_ttl": 5, "sweep_limit": 0}, "sweep_limit must be a positive"),
    ({"default_ttl": 5, "sweep_interval_minutes": -1}, "sweep_interval_minutes must be positive"),
]


async def test_ttl_errors(aio: bool, make: Any, thread_id: str) -> None:
    plain = make()
    for method, args in (("sweep_ttl", ()), ("set_thread_ttl", (thread_id, 5))):
        with pytest.raises(ValueError, match="this saver has no TTL"):
            await call(aio, plain, method, *args)
    with pytest.raises(ValueError, match="no sweep interval"):
        make(ttl={"default_ttl": 5}).start_ttl_sweeper()
    for ttl, message in BAD_TTLS:
        with pytest.raises(ValueError, match=message):
            make(ttl=ttl)


async def test_start_ttl_sweeper_without_ttl_raises(aio: bool, make: Any) -> None:
    saver = make()
    with pytest.raises(ValueError, match="this saver has no TTL"):
        saver.start_ttl_sweeper(1)


# -- the sweep command and the database clock ---------------------------------


def sweep_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sqlsaver", "sweep", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_sweep_command(backend: Any, ttl_db: Engine, thread_id: str) -> None:
    """Expiry by the database's clock: threads written with a clock in 1970
    are long expired; one written with the database clock is not."""
    pruned, deleted, live = thread_id, f"{thread_id}-del", f"{thread_id}-live"
    with SQLSaver.from_url(backend.sync_url, ttl={"default_ttl": 1}, clock=lambda: T0) as past:
        await seed(False, past, pruned, n=3)
        await seed(False, past, deleted, n=1)
    with SQLSaver.from_url(backend.sync_url, ttl={"default_ttl": 60}) as now:
        await seed(False, now, live, n=2)

    done = sweep_command("--url", backend.async_url, "--strategy", "keep_latest")
    assert done.returncode == 0, done.stderr
    assert "swept 2 expired threads (keep_latest)" in done.stdout
    # One transaction: its count is said once, by the final line.
    assert "so far" not in done.stderr
    assert rows(ttl_db, pruned)["checkpoints"] == 1 and expires_at(ttl_db, pruned) is None
    assert rows(ttl_db, live)["checkpoints"] == 2

    with ttl_db.begin() as conn:
        conn.execute(update(T).where(T.c.thread_id.in_([pruned, deleted])).values(expires_at=1.0))
    done = sweep_command("--url", backend.sync_url, "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert "swept 1 expired threads (delete)" in done.stdout
    assert sum(rows(ttl_db, t)["threads"] for t in (pruned, deleted)) == 1
    done = sweep_command("--url", backend.sync_url)
    assert "swept 1 expired threads (delete)" in done.stdout
    assert rows(ttl_db, [pruned, deleted]) == {
        "checkpoints": 0,
        "blobs": 0,
        "writes": 0,
        "threads": 0,
    }
    assert rows(ttl_db, live)["checkpoints"] == 2


async def test_database_clock(aio: bool, make: Any, db: Engine, thread_id: str) -> None:
    quick, slow = thread_id, f"{thread_id}-slow"
    pinned, short, reverted = (f"{thread_id}-{n}" for n in ("pin", "short", "rev"))
    saver = make(ttl={"default_ttl": 0.001})  # 60 ms, by the database's clock
    minute = make(ttl={"default_ttl": 1})
    await seed(aio, saver, quick)
    await seed(aio, saver, pinned)
    await call(aio, saver, "set_thread_ttl", pinned, None)
    for t in (slow, short, reverted):
        await seed(aio, minute, t)
    await call(aio, minute, "set_thread_ttl", short, 0.001)
    await call(aio, minute, "set_thread_ttl", reverted, 0.001)
    await call(aio, minute, "set_thread_ttl", reverted, "default")
    with db.connect() as conn:
        expiry, updated = conn.execute(
            select(T.c.expires_at, T.c.updated_at).where(T.c.thread_id == quick)
        ).one()
    assert expiry - updated == pytest.approx(0.06, abs=1e-3) and abs(updated - time.time()) < 30
    await asyncio.sleep(0.25)
    assert (await seen(aio, saver, quick), await seen(aio, saver, slow)) == (0, 2)
    # Threads' own TTLs, by the database's clock too.
    assert [await seen(aio, saver, t) for t in (pinned, short, reverted)] == [2, 0, 2]
    # The host's clock agrees with the database's.
    host = make(ttl={"default_ttl": 1}, clock=time.time)
    behind = make(ttl={"default_ttl": 1}, clock=lambda: time.time() - 3600)
    assert (await seen(aio, host, quick), await seen(aio, behind, quick)) == (0, 2)
