"""`DeltaChannel` threads (beta) persisted by sqlsaver, on every backend,
sync (`SQLSaver`, ``graph.invoke``) and async (`AsyncSQLSaver`, ``ainvoke``).

A `DeltaChannel` stores a snapshot only every few updates; in between, its
value is rebuilt by replaying ancestor writes from
``get_delta_channel_history``, which sqlsaver answers with set-based SQL.
Covered:

* that answer equals the generic per-ancestor walk of
  `BaseCheckpointSaver` for every checkpoint of a real multi-turn thread,
  every namespace (subgraph calls included), forks (``update_state`` on an
  older checkpoint, ``invoke`` from a ``checkpoint_id``), plain channels,
  unknown channels and checkpoints, and an empty channel list; and on a
  260-step thread, where the walk spans several ``ops.WALK_STEPS`` pages;
  and on checkpoints whose ids are out of order, on every backend and on a
  PostgreSQL database whose collation orders ids unlike Python;
* the state LangGraph rebuilds from it, at every checkpoint of the thread,
  equals the same graph's on `InMemorySaver`;
* ``prune(strategy="keep_latest")`` keeps delta state rebuildable (also
  while paused inside a subgraph) and the thread can go on; on a plain
  thread it keeps one checkpoint per namespace;
* ``copy_thread`` of a delta thread, and ``delete_for_runs`` on real runs;
* a ``delete_thread`` landing between the statements of a history.
"""

import asyncio
import operator
import random
from collections import Counter
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import pytest
from helpers import call
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from sqlalchemy import Engine, create_engine, event, make_url, text

from sqlsaver import SQLSaver, ops
from sqlsaver.models import writes

# -- running sync or async ----------------------------------------------------


async def delta_history(
    aio: bool, saver: Any, config: dict, channels: list[str], *, base: bool
) -> Any:
    """The saver's own `get_delta_channel_history`, or (``base``) the generic
    walk of `BaseCheckpointSaver` over the saver's `get_tuple`."""
    owner = BaseCheckpointSaver if base else type(saver)
    method = getattr(owner, "aget_delta_channel_history" if aio else "get_delta_channel_history")
    out = method(saver, config=config, channels=channels)
    return dict(await out if aio else out)


def cfg(thread_id: str, **configurable: Any) -> dict:
    return {"configurable": {"thread_id": thread_id, **configurable}}


async def summary(aio: bool, graph: Any, config: dict) -> list[tuple]:
    """Every checkpoint of the root namespace, newest first, with the state
    LangGraph rebuilds there."""
    return [
        (s.metadata["step"], s.metadata["source"], s.values, s.next)
        for s in await call(aio, graph, "get_state_history", config)
    ]


async def state(aio: bool, graph: Any, config: dict) -> tuple:
    """The current state, with the paused subgraph's state where there is one."""
    s = await call(aio, graph, "get_state", config, subgraphs=True)
    return s.values, s.next, [(t.name, t.state.values, t.state.next) for t in s.tasks if t.state]


async def namespaces(aio: bool, saver: Any, thread_id: str) -> Counter[str]:
    """Checkpoints per namespace (subgraph calls by node name)."""
    return Counter(
        c.config["configurable"]["checkpoint_ns"].split(":")[0]
        for c in await call(aio, saver, "list", cfg(thread_id))
    )


# -- graphs -------------------------------------------------------------------


def extend(state: list, writes: list) -> list:
    """A batching-invariant reducer: concatenate every write."""
    return [*state, *(item for write in writes for item in write)]


def concat(a: list, b: list) -> list:
    return a + b


def build(delta: bool = True, *, freq: int = 3, pause: bool = False) -> StateGraph:
    """A loop that ticks until ``n`` reaches ``goal``, each tick fanning out
    to two parallel nodes that write the channel in one superstep, then a
    subgraph call (with a delta channel of its own) to close each turn.

    ``delta=False`` gives the same graph on plain reducer channels;
    ``pause`` interrupts the subgraph before its second node."""
    items_reducer: Any = DeltaChannel(extend, snapshot_frequency=freq) if delta else concat
    notes_reducer: Any = DeltaChannel(extend, snapshot_frequency=2) if delta else concat

    # (No `from __future__ import annotations` in this module: these
    # annotations name local reducers, so they must be evaluated here.)
    class Child(TypedDict, total=False):
        notes: Annotated[list, notes_reducer]
        n: int

    class State(TypedDict, total=False):
        items: Annotated[list, items_reducer]
        plain: Annotated[list, operator.add]
        n: int
        goal: int

    sub = StateGraph(Child)
    for i in range(3):
        sub.add_node(f"s{i}", lambda s, i=i: {"notes": [f"n{s['n']}.{i}"]})
    sub.add_edge(START, "s0")
    sub.add_edge("s0", "s1")
    sub.add_edge("s1", "s2")

    graph = StateGraph(State)
    graph.add_node(
        "tick",
        lambda s: {
            "items": [f"t{s.get('n', 0)}"],
            "n": s.get("n", 0) + 1,
            "plain": [s.get("n", 0)],
        },
    )
    graph.add_node("left", lambda s: {"items": [f"L{s['n']}"]})
    graph.add_node("right", lambda s: {"items": [f"R{s['n']}"]})
    graph.add_node("child", sub.compile(interrupt_before=["s1"] if pause else None))
    graph.add_edge(START, "tick")
    graph.add_conditional_edges(
        "tick", lambda s: ["left", "right"] if s["n"] < s["goal"] else "child"
    )
    graph.add_edge("left", "tick")
    graph.add_edge("right", "tick")
    return graph


def long_graph() -> StateGraph:
    """One node looping on a delta channel that never snapshots on its own."""

    class State(TypedDict, total=False):
        items: Annotated[list, DeltaChannel(extend, snapshot_frequency=1000)]
        n: int
        goal: int

    graph = StateGraph(State)
    graph.add_node("tick", lambda s: {"items": [s.get("n", 0)], "n": s.get("n", 0) + 1})
    graph.add_edge(START, "tick")
    graph.add_conditional_edges("tick", lambda s: "tick" if s["n"] < s["goal"] else END)
    return graph


async def turns(aio: bool, graph: Any, config: dict, goals: list[int], **kwargs: Any) -> list:
    return [
        await call(aio, graph, "invoke", {"goal": goal, "items": [f"turn{goal}"]}, config, **kwargs)
        for goal in goals
    ]


CHANNELS = ["items", "plain", "n", "goal", "nope", "__start__", "branch:to:tick", "notes"]


# -- tests --------------------------------------------------------------------


@pytest.mark.parametrize("binds", [ops.WRITES_AND_VALUES_BINDS, 1], ids=["joint", "apart"])
async def test_delta_history_matches_base_walk(
    aio: bool, saver: Any, thread_id: str, binds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also with a bind limit that no read's writes and values fit under
    together ("apart"), where each kind takes a statement of its own."""
    monkeypatch.setattr(ops.lookups, "WRITES_AND_VALUES_BINDS", binds)
    memory = InMemorySaver()
    outcomes = []
    for checkpointer in (saver, memory):
        graph = build().compile(checkpointer=checkpointer)
        config = cfg(thread_id)
        await turns(aio, graph, config, [3, 6, 8])
        history = await call(aio, graph, "get_state_history", config)
        # Forks: update_state on an old checkpoint makes the thread's latest
        # checkpoint a child of it, and the next run goes on from there.
        for step, update in ((4, {"items": ["patched"]}), (2, {"items": ["again"], "goal": 5})):
            old = [s for s in history if s.metadata["step"] == step][0]
            await call(aio, graph, "update_state", old.config, update, as_node="left")
            await call(aio, graph, "invoke", None, config)
        await turns(aio, graph, config, [9])
        outcomes.append((await summary(aio, graph, config), await state(aio, graph, config)))
    assert outcomes[0] == outcomes[1]
    final = outcomes[0][1][0]
    # The latest branch forked at step 2; the abandoned one is still listed.
    assert (
        final["items"][:5] == ["turn3", "t0", "L1", "R1", "again"]
        and "patched" not in final["items"]
    )
    assert any("patched" in values.get("items", ()) for _, _, values, _ in outcomes[0][0])

    checkpoints = await call(aio, saver, "list", cfg(thread_id))
    assert {c.config["configurable"]["checkpoint_ns"].split(":")[0] for c in checkpoints} == {
        "",
        "child",
    }
    seeded_far = 0
    for i, c in enumerate(checkpoints):
        # Each namespace's own channels at every checkpoint; all of them (a
        # channel a namespace lacks, or nobody has, is a walk to the root)
        # and none at every eighth.
        ns = c.config["configurable"]["checkpoint_ns"]
        own = ["notes", "n"] if ns else ["items", "plain", "n", "goal"]
        for channels in (own, CHANNELS, []) if i % 8 == 0 else (own,):
            mine = await delta_history(aio, saver, c.config, channels, base=False)
            assert mine == await delta_history(aio, saver, c.config, channels, base=True), (
                c.metadata,
                channels,
            )
            assert list(mine) == channels
            if channels is own:
                entry = mine[own[0]]
                seeded_far += "seed" in entry and len(entry["writes"]) >= 2
    assert len(checkpoints) > 60 and seeded_far > 20  # walks over several ancestors to a snapshot
    # The latest checkpoint when none is named; nothing for unknown ones.
    for config in (
        cfg(thread_id),
        cfg(thread_id, checkpoint_ns=""),
        cfg(thread_id, checkpoint_id="nope"),
        cfg("no-such-thread"),
    ):
        assert await delta_history(aio, saver, config, CHANNELS, base=False) == await delta_history(
            aio, saver, config, CHANNELS, base=True
        )
    assert await delta_history(aio, saver, cfg("no-such-thread"), ["items"], base=False) == {
        "items": {"writes": []}
    }


async def test_fork_from_checkpoint_id(aio: bool, saver: Any, thread_id: str) -> None:
    """``invoke`` from an older ``checkpoint_id`` starts a branch; the walk
    from its checkpoints must follow parent links, not id order."""
    outcomes = []
    for checkpointer in (saver, InMemorySaver()):
        graph = build().compile(checkpointer=checkpointer)
        config = cfg(thread_id)
        await turns(aio, graph, config, [3, 6])
        old = [
            s
            for s in await call(aio, graph, "get_state_history", config)
            if s.metadata["step"] == 4
        ][0]
        forked = await call(aio, graph, "invoke", {"goal": 8, "items": ["fork"]}, old.config)
        await turns(aio, graph, config, [10])
        outcomes.append(
            (old.values, forked, await summary(aio, graph, config), await state(aio, graph, config))
        )
    assert outcomes[0] == outcomes[1]
    before, forked = outcomes[0][0]["items"], outcomes[0][1]["items"]
    assert forked[: len(before)] == before and "fork" in forked and "turn6" not in forked
    for c in await call(aio, saver, "list", cfg(thread_id, checkpoint_ns="")):
        channels = ["items", "plain", "n"]
        mine = await delta_history(aio, saver, c.config, channels, base=False)
        assert mine == await delta_history(aio, saver, c.config, channels, base=True), c.metadata


async def test_long_walk_over_many_chunks(
    sync_saver: Any, async_saver: Any, thread_id: str
) -> None:
    """A snapshot at the root (``update_state`` on a new thread), then 260
    steps without one: walks of up to 260 ancestors, across the boundaries
    of `ops.WALK_STEPS` pages (32, then 128 more), by the sync and the async saver."""
    config = {**cfg(thread_id), "recursion_limit": 1000}
    values = []
    for checkpointer in (sync_saver, InMemorySaver()):
        graph = long_graph().compile(checkpointer=checkpointer)
        graph.update_state(config, {"items": ["start"], "goal": 260}, as_node=START)
        graph.invoke(None, config)
        values.append(graph.get_state(config).values)
    assert values[0] == values[1] and values[0]["items"] == ["start", *range(260)]

    history = list(sync_saver.list(cfg(thread_id)))
    assert len(history) == 261 and ops.WALK_STEPS[:2] == (32, 128)
    channels = ["items", "n", "nope"]
    # Chains that end at each step's boundary, one past it, and the whole thread.
    for ancestors in (1, 31, 32, 33, 159, 160, 161, 260):
        at = history[len(history) - 1 - ancestors].config
        expected = BaseCheckpointSaver.get_delta_channel_history(
            sync_saver, config=at, channels=channels
        )
        assert expected["items"]["seed"].value == ["start"]
        assert [w[2] for w in expected["items"]["writes"]] == [[i] for i in range(ancestors)]
        assert expected["nope"] == {"writes": []}
        assert sync_saver.get_delta_channel_history(config=at, channels=channels) == expected
        assert (
            await async_saver.aget_delta_channel_history(config=at, channels=channels) == expected
        )
        # Where writes and values cannot share a statement, chains longer
        # than one IN list (`ops.CHUNK` checkpoints) load their writes in
        # chunks.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ops.lookups, "WRITES_AND_VALUES_BINDS", 1)
            patch.setattr(ops.lookups, "CHUNK", 7)
            assert sync_saver.get_delta_channel_history(config=at, channels=channels) == expected


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "plain"])
async def test_prune_keep_latest(aio: bool, saver: Any, thread_id: str, delta: bool) -> None:
    reference = build(delta).compile(checkpointer=InMemorySaver())
    graph = build(delta).compile(checkpointer=saver)
    config = cfg(thread_id)
    for g in (graph, reference):
        await turns(aio, g, config, [3, 6])
        # A fork: the head's ancestors are not the checkpoints listed before it.
        old = [
            s for s in await call(aio, g, "get_state_history", config) if s.metadata["step"] == 6
        ][0]
        await call(aio, g, "update_state", old.config, {"items": ["patched"]}, as_node="left")
        await turns(aio, g, config, [8])
    head = await call(aio, saver, "get_tuple", config)
    if delta:  # the head is no snapshot: keeping it alone would lose state
        assert head.metadata.get("counters_since_delta_snapshot", {}).get("items")
    before, counts = await state(aio, graph, config), await namespaces(aio, saver, thread_id)

    await call(aio, saver, "prune", [thread_id], strategy="keep_latest")
    after = await namespaces(aio, saver, thread_id)
    assert await state(aio, graph, config) == before == await state(aio, reference, config)
    kept = await call(aio, saver, "get_tuple", config)
    assert (kept.config, kept.checkpoint, kept.metadata, kept.pending_writes) == head[:3] + head[4:]
    if delta:
        assert 1 < after[""] < counts[""]
    else:
        assert after == {"": 1}  # a finished subgraph call goes with its root checkpoint

    for g in (graph, reference):
        await turns(aio, g, config, [10])
    assert await state(aio, graph, config) == await state(aio, reference, config)


@pytest.mark.parametrize("delta", [True, False], ids=["delta", "plain"])
async def test_prune_while_paused_in_subgraph(
    aio: bool, saver: Any, thread_id: str, delta: bool
) -> None:
    reference = build(delta, pause=True).compile(checkpointer=InMemorySaver())
    graph = build(delta, pause=True).compile(checkpointer=saver)
    config = cfg(thread_id)
    for g in (graph, reference):
        await turns(aio, g, config, [4])
        await call(aio, g, "invoke", None, config)  # resume turn 1
        await turns(aio, g, config, [7])  # turn 2 pauses in the subgraph
    before, counts = await state(aio, graph, config), await namespaces(aio, saver, thread_id)
    assert before[1] == ("child",) and before[2][0][2] == ("s1",)

    await call(aio, saver, "prune", [thread_id], strategy="keep_latest")
    after = await namespaces(aio, saver, thread_id)
    assert await state(aio, graph, config) == before == await state(aio, reference, config)
    if delta:
        assert set(after) == {"", "child"} and after[""] < counts[""]
    else:
        # One per namespace: the root's and the paused call's.
        ns = {
            c.config["configurable"]["checkpoint_ns"]
            for c in await call(aio, saver, "list", cfg(thread_id))
        }
        assert after == {"": 1, "child": 1} and len(ns) == 2

    for g in (graph, reference):
        await call(aio, g, "invoke", None, config)
    assert await state(aio, graph, config) == await state(aio, reference, config)
    assert (await state(aio, graph, config))[0]["n"] == 7


async def test_copy_thread(aio: bool, saver: Any, thread_id: str) -> None:
    graph = build().compile(checkpointer=saver)
    source, target = cfg(thread_id), cfg(f"{thread_id}-copy")
    await turns(aio, graph, source, [3, 6])
    await call(aio, saver, "copy_thread", thread_id, f"{thread_id}-copy")
    assert await state(aio, graph, target) == await state(aio, graph, source)
    assert await summary(aio, graph, target) == await summary(aio, graph, source)
    assert await namespaces(aio, saver, f"{thread_id}-copy") == await namespaces(
        aio, saver, thread_id
    )
    assert await delta_history(aio, saver, target, ["items"], base=False) == await delta_history(
        aio, saver, source, ["items"], base=True
    )
    # Both go on independently, to the same place.
    for config in (source, target):
        await turns(aio, graph, config, [9])
    assert await state(aio, graph, target) == await state(aio, graph, source)
    assert (await state(aio, graph, target))[0]["n"] == 9


async def test_delete_for_runs(aio: bool, saver: Any, thread_id: str) -> None:
    graph = build().compile(checkpointer=saver)
    reference = build().compile(checkpointer=InMemorySaver())
    states = []
    for run, goal in (("r1", 3), ("r2", 5), ("r3", 7)):
        if run != "r3":
            await call(aio, reference, "invoke", {"goal": goal, "items": [run]}, cfg(thread_id))
        # A run id reaches the metadata from config["metadata"] or configurable.
        where = {"metadata": {"run_id": f"{thread_id}-{run}"}} if run != "r2" else {}
        config = cfg(thread_id, **({"run_id": f"{thread_id}-{run}"} if run == "r2" else {}))
        await call(aio, graph, "invoke", {"goal": goal, "items": [run]}, {**config, **where})
        states.append(await state(aio, graph, cfg(thread_id)))

    async def runs() -> Counter[str]:
        return Counter(
            (
                c.config["configurable"]["checkpoint_ns"].split(":")[0],
                c.metadata.get("run_id", "").rsplit("-", 1)[-1],
            )
            for c in await call(aio, saver, "list", cfg(thread_id))
        )

    before = await runs()
    assert {run for _, run in before} == {"r1", "r2", "r3"} and before[("child", "r3")] > 0

    await call(aio, saver, "delete_for_runs", [f"{thread_id}-r3"])
    assert await runs() == {k: v for k, v in before.items() if k[1] != "r3"}
    assert await state(aio, graph, cfg(thread_id)) == states[1]
    # The thread goes on as if run 3 had never been.
    for g in (graph, reference):
        await call(
            aio,
            g,
            "invoke",
            {"goal": 9, "items": ["r4"]},
            {**cfg(thread_id), "metadata": {"run_id": f"{thread_id}-r4"}},
        )
    assert await state(aio, graph, cfg(thread_id)) == await state(aio, reference, cfg(thread_id))
    before = await runs()

    # Deleting an earlier run leaves the later one's checkpoints alone (its
    # delta state may need the deleted ancestors: the documented caveat).
    await call(aio, saver, "delete_for_runs", [f"{thread_id}-r1", "no-such-run"])
    assert await runs() == {k: v for k, v in before.items() if k[1] in ("r2", "r4")}


async def test_delta_history_racing_a_delete_sees_one_state(
    aio: bool, saver: Any, backend: Any, thread_id: str
) -> None:
    """`delete_for_runs` from elsewhere deletes the middle of a chain
    between the walk and the statement that reads the chain's writes: the
    history is as it was before the delete, or as it is after it (ending
    at the gap), never the writes of both ends without the middle's."""
    graph = long_graph().compile(checkpointer=saver)
    for run, goal in (("r1", 2), ("r2", 4), ("r3", 6)):
        run_config = {**cfg(thread_id), "metadata": {"run_id": f"{thread_id}-{run}"}}
        await call(aio, graph, "invoke", {"goal": goal, "items": [run]}, run_config)
    config = (await call(aio, saver, "get_tuple", cfg(thread_id))).config
    before = await delta_history(aio, saver, config, ["items"], base=False)
    assert len(before["items"]["writes"]) == 9  # three inputs, six ticks
    deleter = SQLSaver.from_url(backend.sync_url)
    selects, raced = [], []

    def delete_before_the_second_select(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if raced or not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            return
        selects.append(sql)
        if len(selects) == 2:  # the walk is done
            raced.append(True)  # before the delete: its own statements come here too
            deleter.delete_for_runs([f"{thread_id}-r2"])

    event.listen(Engine, "before_cursor_execute", delete_before_the_second_select)
    try:
        found = await delta_history(aio, saver, config, ["items"], base=False)
    finally:
        event.remove(Engine, "before_cursor_execute", delete_before_the_second_select)
        deleter.close()
    assert raced == [True]
    after = await delta_history(aio, saver, config, ["items"], base=False)
    assert len(after["items"]["writes"]) == 3  # r3's input and ticks, back to the gap
    assert found in (before, after)


# Ids out of every order: parents both above and below their children, in
# code point order and in Danish (where "aa" is "å", after "z").
SHUFFLED_IDS = [f"{prefix}{n:02d}" for n, prefix in enumerate(["aa", "ab", "z", "b", "ø"] * 9)]
random.Random(7).shuffle(SHUFFLED_IDS)


async def put_chain(aio: bool, saver: Any, thread_id: str) -> list[str]:
    """A thread whose checkpoints have `SHUFFLED_IDS`, each the parent of
    the next, and a fork off every seventh; each writes its id to
    ``items``, and the first and the 25th store a value of it (seeds).
    Returns the ids of them all."""
    forks = [f"{cid}-fork" for cid in SHUFFLED_IDS[::7]]
    parents = {
        **dict(zip(SHUFFLED_IDS[1:], SHUFFLED_IDS, strict=False)),
        **dict(zip(forks, SHUFFLED_IDS[::7], strict=True)),
    }
    for step, cid in enumerate([*SHUFFLED_IDS, *forks]):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = cid
        # Every checkpoint a new version; only the seeds a stored value.
        checkpoint["channel_versions"] = {"items": step + 1}
        seeded = step in (0, 25)
        if seeded:
            checkpoint["channel_values"] = {"items": [f"seed {step}"]}
        parent = {"checkpoint_id": parents[cid]} if cid in parents else {}
        at = cfg(thread_id, checkpoint_ns="", **parent)
        versions = {"items": step + 1} if seeded else {}
        stored = await call(aio, saver, "put", at, checkpoint, {"step": step}, versions)
        await call(aio, saver, "put_writes", stored, [("items", [cid])], f"task-{step}")
    return [*SHUFFLED_IDS, *forks]


async def assert_histories_follow_parents(aio: bool, saver: Any, thread_id: str) -> None:
    """At every checkpoint of `put_chain`, the history equals the generic
    walk of `BaseCheckpointSaver`."""
    ids = await put_chain(aio, saver, thread_id)
    channels = ["items", "nope"]
    for cid in ids:
        config = cfg(thread_id, checkpoint_ns="", checkpoint_id=cid)
        mine = await delta_history(aio, saver, config, channels, base=False)
        assert mine == await delta_history(aio, saver, config, channels, base=True), cid
    # Sanity: the walks went far, past pages and seeds.
    last = await delta_history(
        aio, saver, cfg(thread_id, checkpoint_id=SHUFFLED_IDS[-1]), channels, base=False
    )
    assert last["items"]["seed"] == ["seed 25"] and len(last["items"]["writes"]) == 19


async def test_walk_follows_parents_whatever_the_order_of_ids(
    aio: bool, saver: Any, thread_id: str
) -> None:
    """The walk reads pages of checkpoints in the database's order of ids
    and follows parent links through them; parents whose ids are greater
    than their children's, forks between them, and chains over several
    pages come out as the generic walk gives them."""
    await assert_histories_follow_parents(aio, saver, thread_id)


@pytest.fixture
def danish_postgres(backend: Any) -> Iterator[str]:
    """A PostgreSQL database whose text compares in Danish (ICU), set up
    for sqlsaver: its order of ids is not Python's."""
    admin = create_engine(backend.sync_url, isolation_level="AUTOCOMMIT")
    name = "sqlsaver_test_danish"
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(
            text(
                f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu"
                " ICU_LOCALE 'da-DK' LOCALE 'C.UTF-8'"
            )
        )
    url = make_url(backend.sync_url).set(database=name)
    with SQLSaver.from_url(url) as saver:
        saver.setup()
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_walk_holds_under_a_collation_of_another_order(danish_postgres: str) -> None:
    """The walk and the ranges of ids it reads writes over take their order
    from the database, never from Python: on a database where "aa" comes
    after "z", every history still equals the generic walk's."""
    with SQLSaver.from_url(danish_postgres) as saver:
        with saver._runner.engine.connect() as conn:
            assert conn.scalar(text("SELECT 'aa' > 'z' AND 'ab' < 'aa'"))
        asyncio.run(assert_histories_follow_parents(False, saver, "danish"))


async def test_walk_by_keys_where_ids_run_backwards(aio: bool, saver: Any, thread_id: str) -> None:
    """Each parent's id greater than its child's: no page of ids holds the
    next parent, so after the first page the walk follows the parent links
    in SQL, a few statements for 200 ancestors (a page per ancestor
    otherwise)."""
    ids = [f"{999 - step:03d}" for step in range(201)]
    parent: dict[str, str] = {}
    for step, cid in enumerate(ids):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = cid
        checkpoint["channel_versions"] = {"items": step + 1}
        if step == 0:
            checkpoint["channel_values"] = {"items": ["seed"]}
        at = cfg(thread_id, checkpoint_ns="", **parent)
        stored = await call(
            aio, saver, "put", at, checkpoint, {}, {"items": 1} if step == 0 else {}
        )
        await call(aio, saver, "put_writes", stored, [("items", [step])], f"task-{step}")
        parent = {"checkpoint_id": cid}
    config = cfg(thread_id, checkpoint_ns="", checkpoint_id=ids[-1])
    selects: list[str] = []

    def count(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        selects.append(sql)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        mine = await delta_history(aio, saver, config, ["items"], base=False)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert mine == await delta_history(aio, saver, config, ["items"], base=True)
    assert mine["items"]["seed"] == ["seed"] and len(mine["items"]["writes"]) == 200
    # A page of ids, pages of keys of 128 and 512, then the writes.
    assert len(selects) == 4, [" ".join(sql.split())[:60] for sql in selects]


async def test_history_of_a_fork_reads_no_other_branch(
    aio: bool, saver: Any, backend: Any, thread_id: str
) -> None:
    """A fork from early in a thread, made after the branch it left went
    on: the range of ids its history reads also holds that branch's later
    checkpoints, whose writes are passed over, not decoded. One that could
    not be decoded (here a type no serializer knows) does not break the
    fork's history."""
    # Ids in time order: 21 checkpoints, then 11 forked from the third.
    main = [f"{step:04d}" for step in range(21)]
    fork = [f"{step:04d}" for step in range(21, 32)]
    parents = {**dict(zip(main[1:], main, strict=False)), fork[0]: main[2]}
    parents.update(zip(fork[1:], fork, strict=False))
    for step, cid in enumerate([*main, *fork]):
        checkpoint = empty_checkpoint()
        checkpoint["id"] = cid
        checkpoint["channel_versions"] = {"items": step + 1}
        if step == 0:
            checkpoint["channel_values"] = {"items": ["seed"]}
        parent = {"checkpoint_id": parents[cid]} if cid in parents else {}
        at = cfg(thread_id, checkpoint_ns="", **parent)
        versions = {"items": 1} if step == 0 else {}
        stored = await call(aio, saver, "put", at, checkpoint, {}, versions)
        await call(aio, saver, "put_writes", stored, [("items", [cid])], f"task-{step}")
    engine = create_engine(backend.sync_url)
    try:
        with engine.begin() as conn:
            spoiled = conn.execute(
                writes.update()
                .where(writes.c.thread_id == thread_id, writes.c.checkpoint_id.in_(main[3:]))
                .values(type="no-such-serializer")
            ).rowcount
    finally:
        engine.dispose()
    assert spoiled == 18
    try:
        head = cfg(thread_id, checkpoint_ns="", checkpoint_id=fork[-1])
        mine = await delta_history(aio, saver, head, ["items"], base=False)
        assert mine == await delta_history(aio, saver, head, ["items"], base=True)
        assert mine["items"]["seed"] == ["seed"]
        expected = [[cid] for cid in [*main[:3], *fork[:-1]]]
        assert [w[2] for w in mine["items"]["writes"]] == expected
    finally:  # rows no serializer reads must not reach tests that list every thread
        await call(aio, saver, "delete_thread", thread_id)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_prune_keeps_the_latest_under_a_collation_of_another_order(danish_postgres: str) -> None:
    """``prune(strategy="keep_latest")`` keeps the checkpoint `get_tuple`
    finds latest, in the database's order of ids, where Python's differs
    ("aa" after "z" in Danish)."""
    with SQLSaver.from_url(danish_postgres) as saver:
        config = cfg("danish-prune", checkpoint_ns="")
        for cid in ("z1", "aa2"):
            checkpoint = empty_checkpoint()
            checkpoint["id"] = cid
            config = saver.put(config, checkpoint, {}, {})
        latest = saver.get_tuple(cfg("danish-prune"))
        assert latest is not None and latest.config["configurable"]["checkpoint_id"] == "aa2"
        saver.prune(["danish-prune"], strategy="keep_latest")
        kept = [c.config["configurable"]["checkpoint_id"] for c in saver.list(cfg("danish-prune"))]
        assert kept == ["aa2"]
