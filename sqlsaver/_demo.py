"""The demo graph: draft a note, pause for a human's approval, file it.

Every turn adds a note to the same thread; the pause is an `interrupt`, so
the pending approval is itself a checkpoint in the database, and a run that
stopped there (``--pause``) is resumed by the next one.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Annotated, Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from sqlsaver.saver import SQLSaver


class Notes(TypedDict, total=False):
    drafts: Annotated[list[str], operator.add]
    filed: Annotated[list[str], operator.add]


def draft(state: Notes) -> Notes:
    number = len(state.get("drafts", [])) + 1
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {"drafts": [f"note {number} ({when})"]}


def approve(state: Notes) -> Notes:
    note = state["drafts"][-1]
    decision = interrupt({"approve": note})
    return {"filed": [f"{note}: {decision}"]}


def build(saver: SQLSaver) -> Any:
    graph = StateGraph(Notes)
    graph.add_node("draft", draft)
    graph.add_node("approve", approve)
    graph.add_edge(START, "draft")
    graph.add_edge("draft", "approve")
    graph.add_edge("approve", END)
    return graph.compile(checkpointer=saver)


def run_turn(
    saver: SQLSaver, thread_id: str, say: Callable[[str], None], pause: bool = False
) -> None:
    """One demo turn on ``thread_id``, narrated through ``say``."""
    graph = build(saver)
    config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
    before = len(list(saver.list(config)))
    say(f"thread {thread_id!r}: {before} checkpoints stored so far")
    if not graph.get_state(config).interrupts:
        graph.invoke({}, config)
        note = graph.get_state(config).interrupts[0].value["approve"]
        say(f"drafted {note!r}; paused for approval (the pause is a checkpoint)")
        if pause:
            say("stopped at the approval; run the demo again to resume it")
            return
    else:
        say(f"resuming the approval left pending: {graph.get_state(config).interrupts[0].value}")
    state = graph.invoke(Command(resume="approved"), config)
    after = len(list(saver.list(config)))
    say(f"approved and filed; the thread now has {after} checkpoints (+{after - before})")
    say("filed notes:")
    for note in state["filed"]:
        say(f"  - {note}")
    say("run the demo again: the same thread resumes from the database and grows")
