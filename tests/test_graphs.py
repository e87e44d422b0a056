"""Real LangGraph graphs persisted by sqlsaver, on every backend, sync and async.

Every scenario runs twice, on the saver under test and on LangGraph's own
`InMemorySaver`, through the same calls (``graph.invoke`` / ``stream`` with
`SQLSaver`, ``graph.ainvoke`` / ``astream`` with `AsyncSQLSaver`), and the
two must agree: the results, the final state, and every checkpoint of the
thread's history as ``(step, source, values, next)``. Covered:

* ``interrupt()`` in a node, resumed with ``Command(resume=...)``: the
  interrupt is visible in ``get_state`` before the resume, the state after
  it is right, and completed nodes are not run again;
* two ``interrupt()`` calls in one node, resumed one after the other (the
  second resume saves the task's interrupt and both resume values in one
  ``put_writes``);
* a compiled subgraph as a node of a parent graph, interrupting inside the
  subgraph, ``get_state(..., subgraphs=True)``, resumed from the parent;
* a ``Send`` fan-out to parallel branches reduced into a list, with
  ``get_state_history`` and ``list(filter=..., before=..., limit=...)``;
* multi-turn conversations on one thread, ``update_state``, and forking
  from an older checkpoint (``invoke`` with a ``checkpoint_id``);
* forking and replaying a graph whose subgraph runs again in the new run.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Annotated, Any, TypedDict

from helpers import call, norm
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, Send, interrupt

# -- running one scenario sync or async ---------------------------------------


async def history(aio: bool, graph: Any, config: dict) -> list[tuple]:
    return [
        (s.metadata["step"], s.metadata["source"], norm(s.values), s.next)
        for s in await call(aio, graph, "get_state_history", config)
    ]


async def on_both(aio: bool, saver: Any, build: Any, scenario: Any, thread_id: str) -> Any:
    """Run `scenario(graph, config, runs)` on `saver` and on an `InMemorySaver`;
    assert they agree and return the saver's outcome and node run counts."""
    outcomes = []
    for checkpointer in (saver, InMemorySaver()):
        runs: Counter[str] = Counter()
        graph = build(runs).compile(checkpointer=checkpointer)
        config = {"configurable": {"thread_id": thread_id}}
        outcome = await scenario(graph, config, runs)
        outcomes.append((outcome, dict(runs), await history(aio, graph, config)))
    assert outcomes[0] == outcomes[1]
    return outcomes[0]


def cfg(thread_id: str, **configurable: Any) -> dict:
    return {"configurable": {"thread_id": thread_id, **configurable}}


# -- graphs -------------------------------------------------------------------


class Steps(TypedDict, total=False):
    steps: Annotated[list, operator.add]
    answer: str


class Log(TypedDict, total=False):
    log: Annotated[list, operator.add]
    answer: str


class Parent(Log, total=False):
    steps: Annotated[list, operator.add]


def counted(runs: Counter[str], name: str, fn: Any) -> Any:
    def node(state: Any) -> Any:
        runs[name] += 1
        return fn(state)

    return node


def chain(runs: Counter[str], state: type, prefix: str, *nodes: tuple[str, Any]) -> StateGraph:
    """A straight line of nodes (counted, unless a subgraph)."""
    builder = StateGraph(state)
    names = [f"{prefix}{name}" for name, _ in nodes]
    for name, (_, fn) in zip(names, nodes, strict=True):
        builder.add_node(name, fn if hasattr(fn, "invoke") else counted(runs, name, fn))
    for a, b in zip([START, *names], [*names, END], strict=True):
        builder.add_edge(a, b)
    return builder


def ask(key: str) -> Any:
    def node(state: Any) -> Any:
        return {"answer": interrupt({"question": "proceed?", "seen": state[key]}), key: ["ask"]}

    return node


def interrupt_graph(runs: Counter[str], asker: Any = None) -> StateGraph:
    """prepare, ask (``asker``, default: one interrupt), finish."""
    return chain(
        runs,
        Log,
        "",
        ("prepare", lambda s: {"log": ["prepare"]}),
        ("ask", asker or ask("log")),
        ("finish", lambda s: {"log": [f"finish:{s['answer']}"]}),
    )


def ask_twice(state: Log) -> Log:
    first = interrupt("a")
    second = interrupt({"after": first})
    return {"log": [f"ask:{first}:{second}"], "answer": f"{first}+{second}"}


def two_interrupts_graph(runs: Counter[str]) -> StateGraph:
    return interrupt_graph(runs, ask_twice)


def subgraph_graph(runs: Counter[str]) -> StateGraph:
    child = chain(
        runs,
        Steps,
        "sub_",
        ("a", lambda s: {"steps": ["sub_a"]}),
        ("ask", ask("steps")),
        ("b", lambda s: {"steps": [f"sub_b:{s['answer']}"]}),
    ).compile()
    return chain(
        runs,
        Parent,
        "",
        ("pre", lambda s: {"log": ["pre"]}),
        ("child", child),
        ("post", lambda s: {"log": [f"post:{s['answer']}"]}),
    )


def nested_graph(runs: Counter[str]) -> StateGraph:
    """A parent graph with a subgraph node that runs straight through (the
    subgraph's `steps` stay its own: the parent has no such key)."""
    child = chain(
        runs,
        Steps,
        "sub_",
        ("a", lambda s: {"steps": ["sub_a"]}),
        ("b", lambda s: {"steps": ["sub_b"]}),
    )
    return chain(
        runs,
        Log,
        "",
        ("pre", lambda s: {"log": [f"pre:{s['log'][-1]}"]}),
        ("child", child.compile()),
        ("post", lambda s: {"log": ["post"]}),
    )


class Fan(TypedDict, total=False):
    n: int
    results: Annotated[list, operator.add]
    total: int


def fan_graph(runs: Counter[str]) -> StateGraph:
    builder = StateGraph(Fan)
    builder.add_node("work", counted(runs, "work", lambda arg: {"results": [arg["i"] ** 2]}))
    builder.add_node("done", counted(runs, "done", lambda s: {"total": sum(s["results"])}))
    builder.add_conditional_edges(
        START, lambda s: [Send("work", {"i": i}) for i in range(s["n"])], ["work"]
    )
    builder.add_edge("work", "done")
    builder.add_edge("done", END)
    return builder


class Chat(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    turns: int


def chat_graph(runs: Counter[str]) -> StateGraph:
    def reply(state: Chat) -> Chat:
        return {"messages": [f"echo:{state['messages'][-1]}"], "turns": state.get("turns", 0) + 1}

    builder = StateGraph(Chat)
    builder.add_node("reply", counted(runs, "reply", reply))
    builder.add_edge(START, "reply")
    builder.add_edge("reply", END)
    return builder


# -- tests --------------------------------------------------------------------


async def test_interrupt_and_resume(aio: bool, saver: Any, thread_id: str) -> None:
    async def scenario(graph: Any, config: dict, runs: Counter[str]) -> Any:
        first = await call(aio, graph, "invoke", {"log": ["start"]}, config)
        paused = await call(aio, graph, "get_state", config)
        assert paused.next == ("ask",)
        assert [norm(i) for i in paused.interrupts] == [
            ("interrupt", {"question": "proceed?", "seen": ["start", "prepare"]})
        ]
        assert [norm(i) for i in paused.tasks[0].interrupts] == [norm(i) for i in paused.interrupts]
        assert dict(runs) == {"prepare": 1, "ask": 1}
        chunks = await call(
            aio, graph, "stream", Command(resume="yes"), config, stream_mode="updates"
        )
        final = await call(aio, graph, "get_state", config)
        assert final.next == () and final.interrupts == ()
        return norm(first), norm(chunks), final.values

    (first, chunks, values), runs, hist = await on_both(
        aio, saver, interrupt_graph, scenario, thread_id
    )
    assert first["__interrupt__"][0][1]["question"] == "proceed?"
    assert values == {"log": ["start", "prepare", "ask", "finish:yes"], "answer": "yes"}
    # `ask` re-runs on resume (that is how interrupt() works); nothing else does.
    assert runs == {"prepare": 1, "ask": 2, "finish": 1}
    assert chunks == [
        {"ask": {"answer": "yes", "log": ["ask"]}},
        {"finish": {"log": ["finish:yes"]}},
    ]
    assert [(step, source) for step, source, *_ in hist] == [
        (3, "loop"),
        (2, "loop"),
        (1, "loop"),
        (0, "loop"),
        (-1, "input"),
    ]


async def test_two_interrupts_in_one_node(aio: bool, saver: Any, thread_id: str) -> None:
    """The second resume stores the task's interrupt and both resume values
    in one `put_writes`: two writes to ``__resume__``, one key, of which the
    last counts, as in `InMemorySaver` (PostgreSQL once refused the
    statement: "ON CONFLICT DO UPDATE command cannot affect row a second
    time")."""

    async def scenario(graph: Any, config: dict, runs: Counter[str]) -> Any:
        await call(aio, graph, "invoke", {"log": ["start"]}, config)
        asked = []
        for answer in ("x", "y"):
            paused = await call(aio, graph, "get_state", config)
            asked.append((paused.next, [norm(i) for i in paused.interrupts]))
            await call(aio, graph, "invoke", Command(resume=answer), config)
        final = await call(aio, graph, "get_state", config)
        # Each checkpoint's pending writes, task ids (random) left out.
        writes = [
            [(channel, norm(value)) for _, channel, value in t.pending_writes]
            for t in await call(aio, graph.checkpointer, "list", config)
        ]
        return asked, final.values, final.next, writes

    (asked, values, next_, writes), runs, _ = await on_both(
        aio, saver, two_interrupts_graph, scenario, thread_id
    )
    assert asked == [
        (("ask",), [("interrupt", "a")]),
        (("ask",), [("interrupt", {"after": "x"})]),
    ]
    assert values == {"log": ["start", "prepare", "ask:x:y", "finish:x+y"], "answer": "x+y"}
    assert next_ == ()
    # The checkpoint `ask` paused at: the second resume's own write, then the
    # task's: the last of its two ``__resume__`` writes, its second interrupt.
    assert writes[2] == [
        ("__resume__", "y"),
        ("__resume__", ["x", "y"]),
        ("__interrupt__", [("interrupt", {"after": "x"})]),
        ("log", ["ask:x:y"]),
        ("answer", "x+y"),
        ("branch:to:finish", None),
    ]
    assert runs == {"prepare": 1, "ask": 3, "finish": 1}


async def test_subgraph_interrupt_resumed_from_parent(
    aio: bool, saver: Any, thread_id: str
) -> None:
    async def scenario(graph: Any, config: dict, runs: Counter[str]) -> Any:
        await call(aio, graph, "invoke", {"log": ["start"], "steps": ["begin"]}, config)
        paused = await call(aio, graph, "get_state", config, subgraphs=True)
        assert paused.next == ("child",)
        sub = paused.tasks[0].state
        assert sub.next == ("sub_ask",)
        assert sub.config["configurable"]["checkpoint_ns"].startswith("child:")
        assert [norm(i) for i in sub.tasks[0].interrupts] == [
            ("interrupt", {"question": "proceed?", "seen": ["begin", "sub_a"]})
        ]
        # The subgraph's own checkpoints are reachable through its namespace.
        sub_state = await call(aio, graph, "get_state", sub.config)
        assert sub_state.values == sub.values
        sub_ns = sub.config["configurable"]["checkpoint_ns"]
        sub_hist = await history(
            aio, graph, cfg(config["configurable"]["thread_id"], checkpoint_ns=sub_ns)
        )
        await call(aio, graph, "invoke", Command(resume="ok"), config)
        final = await call(aio, graph, "get_state", config, subgraphs=True)
        assert final.next == () and final.tasks == ()
        checkpoints = await call(aio, graph.checkpointer, "list", config)
        namespaces = Counter(
            c.config["configurable"]["checkpoint_ns"].split(":")[0] for c in checkpoints
        )
        return norm(paused.values), norm(sub.values), sub_hist, final.values, dict(namespaces)

    (paused, sub, sub_hist, values, namespaces), runs, _ = await on_both(
        aio, saver, subgraph_graph, scenario, thread_id
    )
    assert paused == {"log": ["start", "pre"], "steps": ["begin"]}
    assert sub == {"steps": ["begin", "sub_a"]}
    assert [(step, source) for step, source, *_ in sub_hist] == [
        (1, "loop"),
        (0, "loop"),
        (-1, "input"),
    ]
    # The subgraph hands back its whole `steps` list, which the parent's
    # reducer appends to the parent's: LangGraph's semantics, on both savers.
    assert values == {
        "log": ["start", "pre", "post:ok"],
        "steps": ["begin", "begin", "sub_a", "ask", "sub_b:ok"],
        "answer": "ok",
    }
    assert runs == {"pre": 1, "sub_a": 1, "sub_ask": 2, "sub_b": 1, "post": 1}
    assert namespaces == {"": 5, "child": 5}


async def test_send_fan_out_history_and_list(aio: bool, saver: Any, thread_id: str) -> None:
    n = 6

    async def scenario(graph: Any, config: dict, runs: Counter[str]) -> Any:
        out = await call(aio, graph, "invoke", {"n": n}, config)
        checkpointer = graph.checkpointer
        by_step = {
            step: [
                c.metadata["step"]
                for c in await call(aio, checkpointer, "list", config, filter={"step": step})
            ]
            for step in range(-2, 4)
        }
        loops = await call(aio, checkpointer, "list", config, filter={"source": "loop", "step": 1})
        everything = await call(aio, checkpointer, "list", config)
        before = await call(aio, checkpointer, "list", config, before=everything[1].config)
        limited = await call(
            aio, checkpointer, "list", config, before=everything[0].config, limit=2
        )
        assert [c.config for c in before] == [c.config for c in everything[2:]]
        assert [c.config for c in limited] == [c.config for c in everything[1:3]]
        assert [c.metadata["step"] for c in loops] == [1]
        return out, by_step, len(before), len(limited)

    (out, by_step, n_before, n_limited), runs, hist = await on_both(
        aio, saver, fan_graph, scenario, thread_id
    )
    squares = [i**2 for i in range(n)]
    assert out == {"n": n, "results": squares, "total": sum(squares)}
    assert runs == {"work": n, "done": 1}
    assert [(step, source) for step, source, *_ in hist] == [
        (2, "loop"),
        (1, "loop"),
        (0, "loop"),
        (-1, "input"),
    ]
    assert hist[0][3] == () and hist[1][3] == ("done",) and hist[2][3] == ("work",) * n
    assert by_step == {-2: [], -1: [-1], 0: [0], 1: [1], 2: [2], 3: []}
    assert (n_before, n_limited) == (2, 2)


async def test_multi_turn_update_state_and_fork(aio: bool, saver: Any, thread_id: str) -> None:
    async def scenario(graph: Any, config: dict, runs: Counter[str]) -> Any:
        lengths, outputs = [], []
        for turn in range(3):
            outputs.append(await call(aio, graph, "invoke", {"messages": [f"hi{turn}"]}, config))
            lengths.append(len(await call(aio, graph, "get_state_history", config)))
        # update_state as if `reply` had run: a new checkpoint, source "update".
        updated = await call(
            aio, graph, "update_state", config, {"messages": ["edited"]}, as_node="reply"
        )
        after_update = await call(aio, graph, "get_state", config)
        assert after_update.config == updated and after_update.metadata["source"] == "update"
        # Fork from the checkpoint that ended the second turn.
        turn1 = [
            s
            for s in await call(aio, graph, "get_state_history", config)
            if s.values.get("turns") == 2 and not s.next
        ][0]
        fork_config = cfg(
            config["configurable"]["thread_id"],
            checkpoint_id=turn1.config["configurable"]["checkpoint_id"],
        )
        forked = await call(aio, graph, "invoke", {"messages": ["fork"]}, fork_config)
        latest = await call(aio, graph, "get_state", config)
        # The fork's first checkpoint hangs off turn 1's, not off the latest.
        path, snapshot = [(latest.metadata["step"], latest.metadata["source"])], latest
        while snapshot.parent_config is not None:
            snapshot = await call(aio, graph, "get_state", snapshot.parent_config)
            path.append((snapshot.metadata["step"], snapshot.metadata["source"]))
        return outputs, lengths, after_update.values, forked, latest.values, path

    (outputs, lengths, updated, forked, latest, path), runs, hist = await on_both(
        aio, saver, chat_graph, scenario, thread_id
    )
    assert outputs[-1] == {
        "messages": ["hi0", "echo:hi0", "hi1", "echo:hi1", "hi2", "echo:hi2"],
        "turns": 3,
    }
    assert lengths == [3, 6, 9]
    assert updated["messages"][-1] == "edited"
    assert (
        forked
        == latest
        == {"messages": ["hi0", "echo:hi0", "hi1", "echo:hi1", "fork", "echo:fork"], "turns": 3}
    )
    assert runs == {"reply": 4}
    assert len(hist) == 9 + 1 + 3
    # History lists every checkpoint, newest first: the fork's after the update.
    assert [h[:2] for h in hist] == [
        (7, "loop"),
        (6, "loop"),
        (5, "input"),
        (8, "update"),
        (7, "loop"),
        (6, "loop"),
        (5, "input"),
        (4, "loop"),
        (3, "loop"),
        (2, "input"),
        (1, "loop"),
        (0, "loop"),
        (-1, "input"),
    ]
    # The fork's parent chain runs through turns 2 and 1, not the update or turn 3.
    assert path == [
        (7, "loop"),
        (6, "loop"),
        (5, "input"),
        (4, "loop"),
        (3, "loop"),
        (2, "input"),
        (1, "loop"),
        (0, "loop"),
        (-1, "input"),
    ]


async def test_fork_and_replay_through_subgraph(aio: bool, saver: Any, thread_id: str) -> None:
    """Runs started from an older checkpoint_id (a fork with new input, a
    replay with none) re-run the subgraph; LangGraph then looks up the
    subgraph's checkpoint with ``list(before={"configurable": {"checkpoint_id": ...}})``,
    a `before` config without a thread id."""

    async def scenario(graph: Any, config: dict, runs: Counter[str]) -> Any:
        for turn in ("one", "two"):
            await call(aio, graph, "invoke", {"log": [turn]}, config)
        history = await call(aio, graph, "get_state_history", config)
        end_of_one = [s for s in history if s.values.get("log") == ["one", "pre:one", "post"]][0]
        forked = await call(aio, graph, "invoke", {"log": ["three"]}, end_of_one.config)
        before_child = [s for s in history if s.next == ("child",)][-1]
        replayed = await call(aio, graph, "invoke", None, before_child.config)
        return forked, replayed

    (forked, replayed), runs, _ = await on_both(aio, saver, nested_graph, scenario, thread_id)
    assert forked["log"] == ["one", "pre:one", "post", "three", "pre:three", "post"]
    assert replayed["log"] == ["one", "pre:one", "post"]
    assert runs == {"pre": 3, "sub_a": 4, "sub_b": 4, "post": 4}
