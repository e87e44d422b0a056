"""What the copy tests (test_copy.py, test_copy_errors.py) share: scratch
databases on the configured servers, the official savers opened on them,
and the real LangGraph graphs whose threads are copied."""

from __future__ import annotations

import operator
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

from conftest import MYSQL, POSTGRES
from helpers import require_server, server_database
from langchain_core.runnables import RunnableConfig
from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple, writes_sort_key
from langgraph.checkpoint.mysql.pymysql import PyMySQLSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send, interrupt
from sqlalchemy import create_engine, func, make_url, select
from sqlalchemy.pool import NullPool

from sqlsaver import SQLSaver
from sqlsaver.models import Base

DATABASES = ("sqlite", "postgres", "mysql")
SYNC = {"postgres": "postgresql+psycopg", "mysql": "mysql+pymysql"}
ASYNC = {"sqlite": "sqlite+aiosqlite", "postgres": "postgresql+asyncpg", "mysql": "mysql+asyncmy"}
SERVERS = {"postgres": POSTGRES, "mysql": MYSQL}


def server(name: str) -> str:
    """The sync URL of the configured server of ``name`` (its own
    database); skipped where it is unreachable, failed under CI."""
    url = f"{SYNC[name]}://{SERVERS[name]}"
    require_server(name, url)
    return url


@contextmanager
def scratch(name: str, folder: Path) -> Iterator[str]:
    """A new empty database of ``name``'s kind (a file in ``folder`` for
    SQLite, else ``sqlsaver_copy_*`` on the configured server, dropped
    afterwards): its sync SQLAlchemy URL."""
    if name == "sqlite":
        yield f"sqlite:///{folder / f'copy_{uuid.uuid4().hex[:8]}.db'}"
        return
    with server_database(server(name), "sqlsaver_copy") as url:
        yield url


def database_of(url: str) -> str:
    """``url``'s kind of database: sqlite, postgres or mysql."""
    backend = make_url(url).get_backend_name()
    return {"postgresql": "postgres", "mariadb": "mysql"}.get(backend, backend)


def async_twin(url: str) -> str:
    return make_url(url).set(drivername=ASYNC[database_of(url)]).render_as_string(False)


@contextmanager
def official(kind: str, url: str, serde: Any = None) -> Iterator[BaseCheckpointSaver]:
    """The official saver of ``kind`` (postgres, mysql, sqlite) on the
    database of ``url``, set up, as its docs open it."""
    parsed = make_url(url)
    if kind == "sqlite":
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(parsed.database or "", check_same_thread=False)
        try:
            saver: Any = SqliteSaver(conn, serde=serde)
            saver.setup()
            yield saver
        finally:
            conn.close()
        return
    plain = parsed.set(drivername="postgresql" if kind == "postgres" else "mysql")
    conn_string = plain.render_as_string(hide_password=False)
    if kind == "postgres":
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg import Connection
        from psycopg.rows import dict_row

        with Connection.connect(
            conn_string, autocommit=True, prepare_threshold=0, row_factory=dict_row
        ) as pg:
            saver = PostgresSaver(pg, serde=serde)
            saver.setup()
            yield saver
        return
    import pymysql

    with pymysql.connect(**MySQLSaver.parse_conn_string(conn_string), autocommit=True) as my:
        saver = MySQLSaver(my, serde=serde)
        saver.setup()
        yield saver


class MySQLSaver(PyMySQLSaver):
    """PyMySQLSaver, reading each checkpoint's pending writes in the order
    LangGraph applies them (`writes_sort_key`: task path, task id, index).

    langgraph-checkpoint-mysql 3.0.0 reads them in task-id order, so a
    `DeltaChannel` that several tasks of a super-step write is rebuilt in
    an order the run did not have (its own value differs from the run's),
    and ``pending_writes`` lists differ in order from every other saver's.
    sqlsaver keeps the rows' task paths and reads them in LangGraph's order;
    this reader is the MySQL saver with only that order changed."""

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = super().get_tuple(config)
        return None if found is None else self._in_order(found)

    def list(self, *args: Any, **kwargs: Any) -> Iterator[CheckpointTuple]:
        for found in list(super().list(*args, **kwargs)):
            yield self._in_order(found)

    def _in_order(self, found: CheckpointTuple) -> CheckpointTuple:
        if not found.pending_writes:
            return found
        at = found.config["configurable"]
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT task_id, idx, task_path FROM checkpoint_writes"
                " WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s",
                (at["thread_id"], at["checkpoint_ns"], at["checkpoint_id"]),
            )
            path = {task_id: task_path for task_id, _, task_path in cur.fetchall()}
        # A task's own writes are read in index order; the sort is stable.
        pending = sorted(found.pending_writes, key=lambda w: writes_sort_key(path[w[0]], w[0]))
        return found._replace(pending_writes=pending)


def opened(kind: str, url: str, serde: Any = None) -> AbstractContextManager[Any]:
    """A saver on ``url``: the official one of ``kind``, or (``sqlsaver``)
    a set-up `SQLSaver`."""
    if kind != "sqlsaver":
        return official(kind, url, serde)

    @contextmanager
    def sqlsaver() -> Iterator[SQLSaver]:
        with SQLSaver.from_url(url, serde=serde) as saver:
            saver.setup()
            yield saver

    return sqlsaver()


def row_counts(url: str) -> dict[str, int]:
    """Rows in each of sqlsaver's tables."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {
                t.name: conn.scalar(select(func.count()).select_from(t)) or 0
                for t in Base.metadata.sorted_tables
            }
    finally:
        engine.dispose()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m sqlsaver ARGS``, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "sqlsaver", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cfg(thread_id: str, **configurable: Any) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread_id, **configurable}}


# -- graphs -------------------------------------------------------------------


def extend(state: list[Any], writes: list[list[Any]]) -> list[Any]:
    """A `DeltaChannel` reducer: every write's items, in order."""
    return [*state, *(item for write in writes for item in write)]


# A string the JSON savers keep inline in the checkpoint, and that sqlsaver
# keeps as a blob row (more than 64 characters).
LONG = "a long note, " * 8


class Job(TypedDict, total=False):
    items: Annotated[list[str], DeltaChannel(extend, snapshot_frequency=3)]
    done: Annotated[list[str], operator.add]
    n: int
    goal: int
    note: str
    ratio: float
    flag: bool
    nothing: None


def mapreduce_graph() -> StateGraph:
    """``plan`` fans out (`Send`) to three ``work`` nodes a round, which
    write a `DeltaChannel` and a list, until ``n`` reaches ``goal``;
    ``plan`` also sets primitive values (long and short strings, float,
    bool, None)."""

    def plan(state: Job) -> Job:
        n = state.get("n", 0) + 1
        return {"n": n, "note": f"{LONG}{n}", "ratio": n / 4, "flag": n % 2 == 0, "nothing": None}

    def fan(state: Job) -> Any:
        if state["n"] > state["goal"]:
            return END
        return [Send("work", {"part": f"p{state['n']}.{i}"}) for i in range(3)]

    def work(arg: dict[str, str]) -> Job:
        return {"items": [arg["part"]], "done": [arg["part"].upper()]}

    graph = StateGraph(Job)
    graph.add_node("plan", plan)
    graph.add_node("work", work)  # type: ignore[type-var]
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", fan, ["work", END])
    graph.add_edge("work", "plan")
    return graph


class Log(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    answer: str


def ask(state: Log) -> Log:
    answer = interrupt({"question": "your name?", "seen": list(state["log"])})
    return {"answer": answer, "log": [f"told {answer}"]}


def interview_graph() -> StateGraph:
    """``intro``, then the ``child`` subgraph (``prep``, ``ask``: an
    ``interrupt()``, ``wrap``), then ``finish``."""
    child = StateGraph(Log)
    child.add_node("prep", lambda s: {"log": ["prep"]})
    child.add_node("ask", ask)
    child.add_node("wrap", lambda s: {"log": ["wrap"]})
    child.add_edge(START, "prep")
    child.add_edge("prep", "ask")
    child.add_edge("ask", "wrap")
    parent = StateGraph(Log)
    parent.add_node("intro", lambda s: {"log": ["intro"]})
    parent.add_node("child", child.compile())
    parent.add_node("finish", lambda s: {"log": [f"bye {s['answer']}"]})
    parent.add_edge(START, "intro")
    parent.add_edge("intro", "child")
    parent.add_edge("child", "finish")
    parent.add_edge("finish", END)
    return parent


def graphs(checkpointer: Any) -> dict[str, Any]:
    return {
        "mapreduce": mapreduce_graph().compile(checkpointer=checkpointer),
        "interview": interview_graph().compile(checkpointer=checkpointer),
    }
