"""The graph the cluster tests run, and what they check about a thread.

A turn appends a message, fans out to three parallel ``work`` tasks (whose
writes LangGraph saves from background threads) and replies: four
checkpoints and a dozen writes a turn, on any saver.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send
from sqlalchemy import Connection, func, select

from sqlsaver.models import checkpoints as C
from sqlsaver.models import writes as W

FAN_OUT = 3


class State(TypedDict, total=False):
    messages: Annotated[list, operator.add]
    results: Annotated[list, operator.add]


def graph(checkpointer: Any) -> Any:
    """The turn's graph, compiled with ``checkpointer``."""
    builder = StateGraph(State)
    builder.add_node("work", lambda arg: {"results": [f"{arg['tag']}:{arg['i']}"]})
    builder.add_node("reply", lambda s: {"messages": [f"echo:{s['messages'][-1]}"]})
    builder.add_conditional_edges(
        START,
        lambda s: [Send("work", {"tag": s["messages"][-1], "i": i}) for i in range(FAN_OUT)],
        ["work"],
    )
    builder.add_edge("work", "reply")
    builder.add_edge("reply", END)
    return builder.compile(checkpointer=checkpointer)


def message(thread_id: str, turn: int) -> str:
    return f"{thread_id}/{turn}"


def turn_input(thread_id: str, turn: int) -> dict[str, Any]:
    return {"messages": [message(thread_id, turn)]}


def config(thread_id: str) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id}}


def check_output(out: dict[str, Any], thread_id: str, turn: int) -> None:
    """A turn's own output: its message answered, its work done."""
    said = message(thread_id, turn)
    assert out["messages"][-2:] == [said, f"echo:{said}"], out
    assert out["results"][-FAN_OUT:] == [f"{said}:{i}" for i in range(FAN_OUT)], out


def history(graph: Any, thread_id: str) -> list[tuple[Any, ...]]:
    """Every checkpoint of the thread, newest first, as (step, source,
    values, next)."""
    return [
        (s.metadata["step"], s.metadata["source"], s.values, s.next)
        for s in graph.get_state_history(config(thread_id))
    ]


def in_memory(thread_id: str, turns: int) -> tuple[list[tuple[Any, ...]], int, int]:
    """What `InMemorySaver` keeps of ``turns`` turns run one after another:
    the history, its checkpoints and its writes."""
    memory = InMemorySaver()
    g = graph(memory)
    for turn in range(turns):
        g.invoke(turn_input(thread_id, turn), config(thread_id))
    writes = sum(len(w) for w in memory.writes.values())
    return history(g, thread_id), sum(len(v) for v in memory.storage[thread_id].values()), writes


def stored(conn: Connection, thread_id: str) -> tuple[int, int, int]:
    """The thread's checkpoint rows, write rows, and checkpoints whose
    parent is missing (a lost row)."""
    checkpoints = conn.execute(
        select(func.count()).select_from(C).where(C.c.thread_id == thread_id)
    ).scalar_one()
    writes = conn.execute(
        select(func.count()).select_from(W).where(W.c.thread_id == thread_id)
    ).scalar_one()
    parent = C.alias("parent")
    orphans = conn.execute(
        select(func.count())
        .select_from(C)
        .where(
            C.c.thread_id == thread_id,
            C.c.parent_checkpoint_id.is_not(None),
            ~select(parent.c.checkpoint_id)
            .where(
                parent.c.thread_id == C.c.thread_id,
                parent.c.checkpoint_ns == C.c.checkpoint_ns,
                parent.c.checkpoint_id == C.c.parent_checkpoint_id,
            )
            .exists(),
        )
    ).scalar_one()
    return checkpoints, writes, orphans
