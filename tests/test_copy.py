"""`copy_threads` and ``python -m sqlsaver copy``, proven against what
sqlsaver did not write: LangGraph's graph API and the official savers.

Each **source** is a database written by real LangGraph graphs
(`copying.graphs`) through a saver: PostgresSaver, PyMySQLSaver and
SqliteSaver on their own databases, and sqlsaver's `SQLSaver` on SQLite,
PostgreSQL and MySQL/MariaDB. Its threads: a map-reduce (`Send` fan-out)
on a `DeltaChannel`, run for two turns and then forked from an older
checkpoint (time travel); an interview whose subgraph is left paused at an
``interrupt()``; and the same interview resumed on the source.

Each source is copied to each **target** database (SQLite, PostgreSQL,
MySQL/MariaDB): the test id says ``SOURCE-to-TARGET`` (and ``async``: an
async target URL; ``cli``: ``python -m sqlsaver copy`` in a subprocess).
In each cell:

1. every thread reads back from the target, through the graph and a
   `SQLSaver`, as it reads from the source through the saver that wrote it:
   ``get_state`` (with ``subgraphs=True``), ``get_state_history`` (values,
   next, configs and parents, metadata, tasks and interrupts), the paused
   subgraph's history, every checkpoint tuple of every namespace (``list``)
   and ``get_delta_channel_history`` at every checkpoint;
2. a second copy copies nothing (every thread skipped) and changes no row;
3. the paused interview, resumed on the target with ``Command(resume=...)``,
   ends as the one resumed on the source did.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from copying import (
    DATABASES,
    async_twin,
    cfg,
    cli,
    graphs,
    opened,
    row_counts,
    scratch,
)
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from langgraph.types import Command

from sqlsaver import AsyncSQLSaver, SQLSaver
from sqlsaver.transfer import copy_threads

# Each thread, and the graph that runs it.
THREADS = {"mapreduce": "mapreduce", "paused é": "interview", "resumed": "interview"}
DELTA_CHANNELS = ["items", "done", "n"]


@dataclass(frozen=True)
class Source:
    name: str  # as the test ids say it
    kind: str  # the saver that wrote it: sqlsaver, or an official one
    url: str  # its SQLAlchemy URL, what a copy reads
    resumed: Any  # the interview resumed on it (`resume`)


# name: (the saver's kind, the database)
SOURCES = {
    "PostgresSaver": ("postgres", "postgres"),
    "PyMySQLSaver": ("mysql", "mysql"),
    "SqliteSaver": ("sqlite", "sqlite"),
    **{f"sqlsaver-{db}": ("sqlsaver", db) for db in DATABASES},
}
# Where a cell copies not with `copy_threads` on sync URLs.
HOW = {
    ("PostgresSaver", "sqlite"): "async",
    ("sqlsaver-postgres", "mysql"): "async",
    ("PyMySQLSaver", "postgres"): "cli-async",
    ("SqliteSaver", "mysql"): "cli",
}
CELLS = [
    pytest.param(
        source,
        target,
        HOW.get((source, target), "sync"),
        id=f"{source}-to-{target}" + (f"-{HOW[source, target]}" if (source, target) in HOW else ""),
    )
    for source in SOURCES
    for target in DATABASES
]


def run_threads(saver: Any) -> Any:
    """Every thread of `THREADS` run on ``saver``; the interview
    ``resumed`` resumed: what `resume` returns for it."""
    g = graphs(saver)
    config = cfg("mapreduce")
    g["mapreduce"].invoke({"goal": 2, "items": ["start"]}, config)
    g["mapreduce"].invoke({"goal": 4}, config)
    # Time travel: run again from an older checkpoint, a fork.
    old = [s for s in g["mapreduce"].get_state_history(config) if s.metadata["step"] == 2]
    assert len(old) == 1
    g["mapreduce"].invoke(None, old[0].config)
    for thread in ("paused é", "resumed"):
        paused = g["interview"].invoke({"log": ["hello"]}, cfg(thread))
        assert [i.value["question"] for i in paused["__interrupt__"]] == ["your name?"]
    return resume(g["interview"], "resumed")


def resume(graph: Any, thread: str) -> Any:
    """The interview resumed, its result and its history."""
    result = graph.invoke(Command(resume="Ada"), cfg(thread))
    return result, summary(graph.get_state_history(cfg(thread)))


async def aresume(graph: Any, thread: str) -> Any:
    result = await graph.ainvoke(Command(resume="Ada"), cfg(thread))
    return result, summary([s async for s in graph.aget_state_history(cfg(thread))])


def summary(history: Any) -> list[tuple[Any, ...]]:
    """A history as it reads whatever the thread's id."""
    return [(s.metadata["step"], s.metadata["source"], s.values, s.next) for s in history]


@pytest.fixture(scope="module", params=list(SOURCES))
def source(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Source]:
    """A source database, its threads written by the saver of its kind."""
    kind, database = SOURCES[request.param]
    with scratch(database, tmp_path_factory.mktemp("source")) as url:
        with opened(kind, url) as saver:
            resumed = run_threads(saver)
        yield Source(request.param, kind, url, resumed)


def views(saver: Any, thread: str) -> dict[str, Any]:
    """What LangGraph and the saver tell of a thread."""
    graph = graphs(saver)[THREADS[thread]]
    config = cfg(thread)
    state = graph.get_state(config, subgraphs=True)
    history = list(graph.get_state_history(config))
    seen: dict[str, Any] = {"state": state, "history": history}
    for task in state.tasks:
        if task.state is not None:  # a paused subgraph: its own history
            seen[f"subgraph {task.name}"] = list(graph.get_state_history(task.state.config))
    seen["tuples"] = list(saver.list(config))
    if thread == "mapreduce":
        seen["delta"] = [
            saver.get_delta_channel_history(config=s.config, channels=DELTA_CHANNELS)
            for s in history
        ]
    return seen


def snapshots_where_taken(got: list[Any], expected: list[Any]) -> list[Any]:
    """``got``'s checkpoint tuples, each `DeltaChannel` snapshot left only
    in the checkpoint that took it, as SqliteSaver keeps them (sqlsaver
    keys a snapshot by its channel's version: the checkpoints after it at
    that version read it back too). Nothing else is changed."""
    out = []
    for mine, theirs in zip(got, expected, strict=True):
        values = mine.checkpoint["channel_values"]
        kept = {
            ch: v
            for ch, v in values.items()
            if ch in theirs.checkpoint["channel_values"] or not isinstance(v, _DeltaSnapshot)
        }
        out.append(mine._replace(checkpoint={**mine.checkpoint, "channel_values": kept}))
    return out


def copy(source: Source, target: str, how: str, cwd: Path) -> None:
    """``source`` copied to ``target`` as the cell says: every thread, verified."""
    to = async_twin(target) if how.endswith("async") else target
    if how.startswith("cli"):
        done = cli("copy", "--from", source.url, "--to", to, cwd=cwd)
        assert done.returncode == 0, done.stderr
        assert f"copied {len(THREADS)} threads" in done.stdout, done.stdout
        assert f"{len(THREADS)} threads verified" in done.stdout, done.stdout
        return
    report = copy_threads(source.url, to)
    assert (report.threads, report.skipped, report.verified) == (len(THREADS), 0, len(THREADS))
    assert report.source_kind == source.kind


@pytest.mark.parametrize("source, target_db, how", CELLS, indirect=["source"])
def test_copy(source: Source, target_db: str, how: str, tmp_path: Path) -> None:
    with scratch(target_db, tmp_path) as target:
        copy(source, target, how, tmp_path)

        with opened(source.kind, source.url) as there, SQLSaver.from_url(target) as here:
            for thread in THREADS:
                expected, got = views(there, thread), views(here, thread)
                if source.kind == "sqlite":
                    got["tuples"] = snapshots_where_taken(got["tuples"], expected["tuples"])
                for view in expected:
                    assert got[view] == expected[view], f"{thread}: {view}"
                assert got.keys() == expected.keys()

        rows = row_counts(target)
        again = copy_threads(source.url, target)
        assert (again.threads, again.skipped, again.rows) == (0, len(THREADS), 0)
        assert row_counts(target) == rows

        if how.endswith("async"):

            async def on_async_saver() -> Any:
                async with AsyncSQLSaver.from_url(async_twin(target)) as saver:
                    return await aresume(graphs(saver)["interview"], "paused é")

            resumed = asyncio.run(on_async_saver())
        else:
            with SQLSaver.from_url(target) as saver:
                resumed = resume(graphs(saver)["interview"], "paused é")
        assert resumed == source.resumed
        assert resumed[0]["log"][-1] == "bye Ada"
