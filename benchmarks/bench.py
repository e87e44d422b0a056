"""sqlsaver against the official single-database savers, on the same servers.

    nox -s bench                 # the full run
    nox -s bench -- --quick      # a smoke run
    python benchmarks/bench.py --backends sqlite,postgres --reps 15

For each database and mode (sync, async) it times the same operations on
sqlsaver and on the official saver for that database, interleaved (every
repetition runs both, alternating who goes first), and reports the median of
each, their ratio (sqlsaver / official: below 1.0 is sqlsaver faster), and
the stored bytes per checkpoint after the graph workload. Results go to
``benchmarks/results/`` as markdown and a PNG chart.

Servers: ``SQLSAVER_BENCH_POSTGRES`` / ``SQLSAVER_BENCH_MYSQL``
(``user@host:port/database``, default: the local ``test`` databases). It drops
and recreates both savers' tables there. It is never part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import operator
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.channels.delta import DeltaChannel
from langgraph.checkpoint.base import BaseCheckpointSaver, create_checkpoint, empty_checkpoint
from langgraph.graph import END, START, StateGraph
from sqlalchemy import create_engine, text

# The benchmark drops and recreates both savers' tables: give it a database of its own.
POSTGRES = os.environ.get("SQLSAVER_BENCH_POSTGRES", "postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("SQLSAVER_BENCH_MYSQL", "root@127.0.0.1:3306/test")
RESULTS = Path(__file__).parent / "results"


# -- the workloads, written once against the async API ---------------------------
# Sync savers are driven through `Sync`, which calls their sync methods.


class Sync:
    """A sync saver behind the async method names (calls run inline)."""

    def __init__(self, saver: BaseCheckpointSaver) -> None:
        self.saver = saver

    async def aput(self, *args: Any) -> Any:
        return self.saver.put(*args)

    async def aput_writes(self, *args: Any) -> None:
        self.saver.put_writes(*args)

    async def aget_tuple(self, config: Any) -> Any:
        return self.saver.get_tuple(config)

    async def alist(self, config: Any, **kwargs: Any) -> list[Any]:
        return list(self.saver.list(config, **kwargs))

    async def aget_delta_channel_history(self, **kwargs: Any) -> Any:
        return self.saver.get_delta_channel_history(**kwargs)

    def get_next_version(self, current: Any, channel: Any) -> Any:
        return self.saver.get_next_version(current, channel)


class Async:
    def __init__(self, saver: BaseCheckpointSaver) -> None:
        self.saver = saver

    def __getattr__(self, name: str) -> Any:
        return getattr(self.saver, name)

    async def alist(self, config: Any, **kwargs: Any) -> list[Any]:
        return [t async for t in self.saver.alist(config, **kwargs)]


def config(thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable = {"thread_id": thread_id, "checkpoint_ns": ""}
    if checkpoint_id:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


async def chat_thread(
    saver: Any, thread_id: str, steps: int, timings: list[float] | None = None
) -> list[str]:
    """A chat-like thread: a growing message list and two small channels,
    only the changed channels in `new_versions`. Returns checkpoint ids."""
    cfg = config(thread_id)
    checkpoint, messages, version, ids = empty_checkpoint(), [], None, []
    for step in range(steps):
        messages = [
            *messages,
            {"role": "ai" if step % 2 else "user", "content": f"message {step} " * 10},
        ]
        version = saver.get_next_version(version, None)
        checkpoint = create_checkpoint(checkpoint, None, step)
        checkpoint["channel_values"] = {"messages": messages, "step": step, "flag": True}
        checkpoint["channel_versions"] = {"messages": version, "step": version, "flag": "1"}
        new = {"messages": version, "step": version, **({"flag": "1"} if step == 0 else {})}
        started = time.perf_counter()
        cfg = await saver.aput(
            cfg, checkpoint, {"source": "loop", "step": step, "parents": {}}, new
        )
        if timings is not None:
            timings.append(time.perf_counter() - started)
        await saver.aput_writes(
            cfg, [("messages", messages[-1:]), ("step", step)], str(uuid.uuid4())
        )
        ids.append(cfg["configurable"]["checkpoint_id"])
    return ids


@dataclass
class Fixture:
    """Data prepared once per saver: many threads, and one to read."""

    thread_id: str
    ids: list[str]
    delta_config: dict[str, Any] = field(default_factory=dict)


async def prepare(saver: Any, threads: int, steps: int) -> Fixture:
    for _ in range(threads):
        await chat_thread(saver, f"bg-{uuid.uuid4()}", 3)
    thread_id = f"read-{uuid.uuid4()}"
    return Fixture(thread_id, await chat_thread(saver, thread_id, steps))


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def operations(saver: Any, fx: Fixture) -> dict[str, Callable[[], Awaitable[float]]]:
    """Each operation as a coroutine factory returning its own duration."""
    middle = fx.ids[len(fx.ids) // 2]

    async def put() -> float:
        timings: list[float] = []
        await chat_thread(saver, f"put-{uuid.uuid4()}", 10, timings)
        return statistics.median(timings)

    async def put_writes() -> float:
        cfg = config(fx.thread_id, fx.ids[-1])
        return await timed(
            lambda: saver.aput_writes(cfg, [("messages", ["x"]), ("step", 1)], str(uuid.uuid4()))
        )

    return {
        "put": put,
        "put_writes": put_writes,
        "get_tuple (latest)": lambda: timed(lambda: saver.aget_tuple(config(fx.thread_id))),
        "get_tuple (by id)": lambda: timed(lambda: saver.aget_tuple(config(fx.thread_id, middle))),
        "list(limit=10)": lambda: timed(lambda: saver.alist(config(fx.thread_id), limit=10)),
        "list(filter=...)": lambda: timed(
            lambda: saver.alist(config(fx.thread_id), filter={"source": "loop", "step": 5})
        ),
        "list(before=..., limit=10)": lambda: timed(
            lambda: saver.alist(config(fx.thread_id), before=config(fx.thread_id, middle), limit=10)
        ),
        "get_delta_channel_history": lambda: timed(
            lambda: saver.aget_delta_channel_history(config=fx.delta_config, channels=["messages"])
        ),
    }


# -- real graphs ------------------------------------------------------------------


def reduce_messages(state: list[str], writes: list[list[str]]) -> list[str]:
    return [*state, *(m for batch in writes for m in batch)]


class DeltaState(TypedDict):
    messages: Annotated[list[str], DeltaChannel(reduce_messages, snapshot_frequency=50)]


class ChatState(TypedDict):
    messages: Annotated[list[str], operator.add]
    turns: int


def delta_graph(checkpointer: Any) -> Any:
    builder = StateGraph(DeltaState)
    builder.add_node("reply", lambda s: {"messages": [f"reply {len(s['messages'])}"]})
    builder.add_edge(START, "reply")
    return builder.compile(checkpointer=checkpointer)


def chat_graph(checkpointer: Any) -> Any:
    builder = StateGraph(ChatState)
    builder.add_node("think", lambda s: {"messages": [f"thought {len(s['messages'])}" * 5]})
    builder.add_node(
        "answer", lambda s: {"messages": ["answer " * 20], "turns": s.get("turns", 0) + 1}
    )
    builder.add_edge(START, "think")
    builder.add_edge("think", "answer")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer)


async def delta_thread(raw: BaseCheckpointSaver, is_async: bool, turns: int) -> dict[str, Any]:
    graph = delta_graph(raw)
    cfg = {"configurable": {"thread_id": f"delta-{uuid.uuid4()}"}}
    for turn in range(turns):
        if is_async:
            await graph.ainvoke({"messages": [f"user {turn}"]}, cfg)
        else:
            graph.invoke({"messages": [f"user {turn}"]}, cfg)
    latest = await raw.aget_tuple(cfg) if is_async else raw.get_tuple(cfg)
    return latest.config


async def graph_run(raw: BaseCheckpointSaver, is_async: bool, turns: int, concurrent: int) -> float:
    graph = chat_graph(raw)

    async def one_thread() -> None:
        cfg = {"configurable": {"thread_id": f"graph-{uuid.uuid4()}"}}
        for turn in range(turns):
            if is_async:
                await graph.ainvoke({"messages": [f"user {turn}"]}, cfg)
            else:
                graph.invoke({"messages": [f"user {turn}"]}, cfg)

    started = time.perf_counter()
    await asyncio.gather(*(one_thread() for _ in range(concurrent)))
    return time.perf_counter() - started


# -- savers under test ---------------------------------------------------------------


@dataclass
class Contender:
    name: str
    saver: BaseCheckpointSaver
    is_async: bool
    storage: Callable[[], int]  # bytes in this saver's tables
    checkpoints: Callable[[], int]


def _scalar(url: str, sql: str) -> Any:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def _count(url: str, table: str) -> Callable[[], int]:
    return lambda: int(_scalar(url, f"SELECT count(*) FROM {table}"))


def _file_size(path: Path) -> Callable[[], int]:
    return lambda: sum(
        Path(f"{path}{s}").stat().st_size for s in ("", "-wal") if Path(f"{path}{s}").exists()
    )


def _pg_size(url: str, tables: list[str]) -> Callable[[], int]:
    sizes = " + ".join(f"pg_total_relation_size('{t}')" for t in tables)
    return lambda: int(_scalar(url, f"SELECT {sizes}"))


def _mysql_size(url: str, tables: list[str]) -> Callable[[], int]:
    names = ", ".join(f"'{t}'" for t in tables)

    def size() -> int:
        for table in tables:  # refresh InnoDB's statistics first
            _scalar(url, f"ANALYZE TABLE {table}")
        return int(
            _scalar(
                url,
                "SELECT SUM(data_length + index_length) FROM information_schema.tables "
                f"WHERE table_schema = DATABASE() AND table_name IN ({names})",
            )
        )

    return size


SQLSAVER_TABLES = ["sqlsaver_checkpoints", "sqlsaver_blobs", "sqlsaver_writes"]
OFFICIAL_TABLES = ["checkpoints", "checkpoint_blobs", "checkpoint_writes"]


def _official(backend: str, is_async: bool, where: str) -> Any:
    """The official saver for a database and mode, as an (async) context manager."""
    if backend == "sqlite":
        if is_async:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            return AsyncSqliteSaver.from_conn_string(where)
        from langgraph.checkpoint.sqlite import SqliteSaver

        return SqliteSaver.from_conn_string(where)
    if backend == "postgres":
        if is_async:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

            return AsyncPostgresSaver.from_conn_string(f"postgresql://{where}")
        from langgraph.checkpoint.postgres import PostgresSaver

        return PostgresSaver.from_conn_string(f"postgresql://{where}")
    if is_async:  # asyncmy: aiomysql 0.3 cannot bind bytes with PyMySQL 1.2
        from langgraph.checkpoint.mysql.asyncmy import AsyncMySaver

        return AsyncMySaver.from_conn_string(f"mysql://{where}")
    from langgraph.checkpoint.mysql.pymysql import PyMySQLSaver

    return PyMySQLSaver.from_conn_string(f"mysql://{where}")


# (sqlsaver sync URL, sqlsaver async URL) per database.
SQLSAVER_URLS = {
    "sqlite": ("sqlite:///{}", "sqlite+aiosqlite:///{}"),
    "postgres": ("postgresql+psycopg://{}", "postgresql+asyncpg://{}"),
    "mysql": ("mysql+pymysql://{}", "mysql+asyncmy://{}"),
}


@contextlib.asynccontextmanager
async def contenders(
    backend: str, is_async: bool, workdir: Path, engine_kwargs: dict[str, Any] | None = None
) -> Any:
    """(sqlsaver, official) for a database and mode, set up and empty."""
    from sqlsaver import AsyncSQLSaver, SQLSaver

    if backend == "sqlite":
        ours_at, theirs_at = (workdir / f"{who}-{is_async}.db" for who in ("sqlsaver", "official"))
        for path in (ours_at, theirs_at):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        ours_sql, theirs_sql = f"sqlite:///{ours_at}", f"sqlite:///{theirs_at}"
        ours_size, theirs_size = _file_size(ours_at), _file_size(theirs_at)
        ours_where, theirs_where = str(ours_at), str(theirs_at)
    else:
        where = POSTGRES if backend == "postgres" else MYSQL
        ours_sql = theirs_sql = SQLSAVER_URLS[backend][0].format(where)
        _reset(ours_sql)
        size = _pg_size if backend == "postgres" else _mysql_size
        ours_size, theirs_size = size(ours_sql, SQLSAVER_TABLES), size(ours_sql, OFFICIAL_TABLES)
        ours_where = theirs_where = where
    ours_url = SQLSAVER_URLS[backend][is_async].format(ours_where)
    async with contextlib.AsyncExitStack() as stack:
        if is_async:
            ours = await stack.enter_async_context(
                AsyncSQLSaver.from_url(ours_url, engine_kwargs=engine_kwargs)
            )
            theirs = await stack.enter_async_context(_official(backend, True, theirs_where))
            await ours.setup()
            await theirs.setup()
        else:
            ours = stack.enter_context(SQLSaver.from_url(ours_url, engine_kwargs=engine_kwargs))
            theirs = stack.enter_context(_official(backend, False, theirs_where))
            ours.setup()
            theirs.setup()
        yield (
            Contender(
                "sqlsaver", ours, is_async, ours_size, _count(ours_sql, "sqlsaver_checkpoints")
            ),
            Contender(
                type(theirs).__name__,
                theirs,
                is_async,
                theirs_size,
                _count(theirs_sql, "checkpoints"),
            ),
        )


def _reset(url: str) -> None:
    """Drop both savers' tables so each run starts from the same state."""
    tables = [*SQLSAVER_TABLES, "sqlsaver_threads", "sqlsaver_alembic_version", *OFFICIAL_TABLES]
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in [*tables, "checkpoint_migrations"]:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


# -- the run ---------------------------------------------------------------------------


@dataclass
class Row:
    database: str
    mode: str
    operation: str
    official: str
    ours: float
    theirs: float
    unit: str = "ms"

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs if self.theirs else float("nan")


async def bench(backend: str, is_async: bool, args: argparse.Namespace, workdir: Path) -> list[Row]:
    mode = "async" if is_async else "sync"
    rows: list[Row] = []
    kwargs = args.engine_kwargs.get(mode)
    async with contenders(backend, is_async, workdir, kwargs) as pair:
        wrapped = [Async(c.saver) if is_async else Sync(c.saver) for c in pair]
        fixtures = [await prepare(w, args.threads, args.steps) for w in wrapped]
        for c, fx in zip(pair, fixtures, strict=True):
            fx.delta_config = await delta_thread(c.saver, is_async, args.delta_turns)
        ops = [operations(w, fx) for w, fx in zip(wrapped, fixtures, strict=True)]
        samples: dict[str, list[list[float]]] = {name: [[], []] for name in ops[0]}
        # Untimed first calls, the same for both: timings are then those of
        # an app that has been running a while (pooled connections open,
        # statements prepared by the driver: psycopg on a statement's fifth
        # run per connection, asyncpg and the official PostgreSQL saver on
        # the first).
        for _ in range(args.warmup):
            for name in samples:
                for i in (0, 1):
                    await ops[i][name]()
        for rep in range(args.reps):
            order = (0, 1) if rep % 2 == 0 else (1, 0)
            for name in samples:
                for i in order:
                    samples[name][i].append(await ops[i][name]())
        for name, (ours, theirs) in samples.items():
            rows.append(
                Row(
                    backend,
                    mode,
                    name,
                    pair[1].name,
                    statistics.median(ours) * 1e3,
                    statistics.median(theirs) * 1e3,
                )
            )
        concurrent = args.concurrent if is_async else 1
        graph_times: list[list[float]] = [[], []]
        for rep in range(max(3, args.reps // 5)):
            for i in (0, 1) if rep % 2 == 0 else (1, 0):
                graph_times[i].append(
                    await graph_run(pair[i].saver, is_async, args.turns, concurrent)
                )
        label = (
            f"graph run ({concurrent} threads x {args.turns} turns)"
            if is_async
            else f"graph run ({args.turns} turns)"
        )
        rows.append(
            Row(
                backend,
                mode,
                label,
                pair[1].name,
                statistics.median(graph_times[0]) * 1e3,
                statistics.median(graph_times[1]) * 1e3,
            )
        )
        sizes = [c.storage() / max(1, c.checkpoints()) for c in pair]
        rows.append(
            Row(
                backend,
                mode,
                "storage per checkpoint",
                pair[1].name,
                sizes[0] / 1024,
                sizes[1] / 1024,
                "KiB",
            )
        )
    return rows


def report(rows: list[Row], args: argparse.Namespace) -> str:
    lines = [
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {args.reps} repetitions after "
        f"{args.warmup} untimed, medians; "
        f"ratio = sqlsaver / official (below 1.00: sqlsaver faster or smaller).",
        "",
        "| database | mode | operation | official saver | sqlsaver | official | ratio |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.database} | {r.mode} | {r.operation} | {r.official} | "
            f"{r.ours:.3f} {r.unit} | {r.theirs:.3f} {r.unit} | {r.ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.database} {r.mode}: {r.operation}" for r in rows]
    ratios = [r.ratio for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(rows) + 1.5))
    colors = ["#2a9d8f" if x <= 1 else "#e76f51" for x in ratios]
    ax.barh(range(len(rows)), ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("sqlsaver / official (median; < 1 is better)")
    ax.set_title("sqlsaver vs the official LangGraph savers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls of each first")
    parser.add_argument("--threads", type=int, default=200, help="background threads in the table")
    parser.add_argument("--steps", type=int, default=40, help="checkpoints in the thread read")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--delta-turns", type=int, default=60)
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: few repetitions, little data"
    )
    parser.add_argument(
        "--engine-kwargs",
        type=json.loads,
        default={},
        help='sqlsaver\'s engine_kwargs by mode, as JSON: {"sync": {...}, "async": {...}}',
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.threads, args.steps, args.turns, args.concurrent, args.delta_turns = (
            3,
            10,
            12,
            2,
            4,
            8,
        )
        args.warmup = 1
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for backend in args.backends.split(","):
        for mode in args.modes.split(","):
            rows += await bench(backend, mode == "async", args, args.out)
            print(report(rows[-10:], args).split("\n", 4)[-1], flush=True)
    text_report = report(rows, args)
    stamp = "quick" if args.quick else "latest"
    (args.out / f"bench-{stamp}.md").write_text(text_report)
    chart(rows, args.out / f"bench-{stamp}.png")
    print(text_report)
    print(f"written: {args.out / f'bench-{stamp}.md'} and .png")


if __name__ == "__main__":
    asyncio.run(main())
