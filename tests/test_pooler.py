"""Through a real PgBouncer in transaction mode (``nox -s pooler``, which
runs ``scripts/pgbouncer.sh``): collected only when ``SQLSAVER_TEST_POOLER``
is set (conftest), never skipped in the ``tests`` session.

Several clients at once, each running real graph turns with a plain URL to
the pooler: PgBouncer's ``server_round_robin = 1`` and a pool smaller than
the clients make one client's statements land on different server sessions,
and several clients' on one. Prepared-statement errors ("does not exist",
"already exists", "bind message supplies N parameters") show only then; a
lone client would keep its server session and pass by luck. On main, 4
threads x 200 turns failed 797 times of 800 on psycopg, 799 on asyncpg
(benchmarks/pooler.py).
"""

from __future__ import annotations

import asyncio
import collections
import operator
import threading
import uuid
from typing import Annotated, Any, TypedDict

import pytest
from conftest import caller_engine_args
from langgraph.graph import END, START, StateGraph
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from sqlsaver import AsyncSQLSaver, SQLSaver, engines

pytestmark = pytest.mark.parametrize("backend", ["postgres"], indirect=True)

WORKERS = 4
TURNS = 40  # per worker


class State(TypedDict):
    messages: Annotated[list[str], operator.add]


def graph_of(checkpointer: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node("think", lambda s: {"messages": [f"thought {len(s['messages'])}"]})
    builder.add_node("answer", lambda s: {"messages": ["answer"]})
    builder.add_edge(START, "think")
    builder.add_edge("think", "answer")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer)


def server_statements(sync_url: str) -> set[int]:
    """The named prepared statements left on the pooler's server sessions:
    asked often enough, through the pooler's round robin, to visit each."""
    engine = create_engine(
        sync_url, poolclass=NullPool, isolation_level="AUTOCOMMIT", **caller_engine_args(sync_url)
    )
    try:
        with engine.connect() as conn:
            sql = text("SELECT count(*) FROM pg_prepared_statements")
            return {conn.execute(sql).scalar_one() for _ in range(20)}
    finally:
        engine.dispose()


def test_a_pooler_is_found(backend: Any) -> None:
    engine = create_engine(backend.sync_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            assert engines._behind_pooler(conn.connection.dbapi_connection, "psycopg")
    finally:
        engine.dispose()


def test_threads_of_graph_turns(backend: Any) -> None:
    failures: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    with SQLSaver.from_url(backend.sync_url) as saver:
        graph = graph_of(saver)

        def work() -> None:
            config = {"configurable": {"thread_id": f"pooler-{uuid.uuid4()}"}}
            for turn in range(TURNS):
                try:
                    graph.invoke({"messages": [f"user {turn}"]}, config)
                except Exception as error:
                    with lock:
                        failures[f"{type(error).__name__}: {error}"[:300]] += 1

        threads = [threading.Thread(target=work) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        latest = saver.get_tuple({"configurable": {"thread_id": "nobody"}})
    assert dict(failures) == {}
    assert latest is None
    assert server_statements(backend.sync_url) == {0}


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg_async"])
async def test_tasks_of_graph_turns(backend: Any, driver: str) -> None:
    url = backend.async_url.replace("+asyncpg", f"+{driver}")
    failures: collections.Counter[str] = collections.Counter()
    async with AsyncSQLSaver.from_url(url) as saver:
        graph = graph_of(saver)

        async def work() -> None:
            config = {"configurable": {"thread_id": f"pooler-{uuid.uuid4()}"}}
            for turn in range(TURNS):
                try:
                    await graph.ainvoke({"messages": [f"user {turn}"]}, config)
                except Exception as error:
                    failures[f"{type(error).__name__}: {error}"[:300]] += 1

        await asyncio.gather(*(work() for _ in range(WORKERS)))
    assert dict(failures) == {}
    assert server_statements(backend.sync_url) == {0}
