"""Graph turns from concurrent clients, through a pooler or straight to the server.

    scripts/pgbouncer.sh up
    python benchmarks/pooler.py --url postgresql+psycopg://postgres@127.0.0.1:6439/test
    python benchmarks/pooler.py --url postgresql+asyncpg://postgres@127.0.0.1:6439/test

Each of ``--workers`` threads (sync URL: `SQLSaver`) or tasks (async URL:
`AsyncSQLSaver`) runs ``--turns`` turns of a two-node graph on a thread of its
own, all on one saver, and the failed turns are counted by their error. It
prints the failures and the turns per second. ``--kwargs`` passes
``engine_kwargs`` as JSON (``'{"connect_args": {"prepare_threshold": 5}}'``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import threading
import time
import uuid
from typing import Any

from bench import chat_graph  # the benchmark's graph: think, then answer
from sqlalchemy import make_url


def _kind(error: BaseException) -> str:
    """An error's class and the start of its message (ids cut off)."""
    words = str(error).split("\n")[0].split()
    kind = f"{type(error).__name__}: {' '.join(words[:12])}"
    cause = getattr(error.__cause__, "orig", None)
    return kind if cause is None else f"{kind} ({_kind(cause)})"


def sync_trial(url: str, workers: int, turns: int, kwargs: dict[str, Any]) -> tuple[Any, float]:
    from sqlsaver import SQLSaver

    failures: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    with SQLSaver.from_url(url, engine_kwargs=kwargs) as saver:
        saver.setup()
        graph = chat_graph(saver)

        def work() -> None:
            cfg = {"configurable": {"thread_id": f"pooler-{uuid.uuid4()}"}}
            for turn in range(turns):
                try:
                    graph.invoke({"messages": [f"user {turn}"]}, cfg)
                except Exception as error:
                    with lock:
                        failures[_kind(error)] += 1

        started = time.perf_counter()
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return failures, time.perf_counter() - started


async def async_trial(
    url: str, workers: int, turns: int, kwargs: dict[str, Any]
) -> tuple[Any, float]:
    from sqlsaver import AsyncSQLSaver

    failures: collections.Counter[str] = collections.Counter()
    async with AsyncSQLSaver.from_url(url, engine_kwargs=kwargs) as saver:
        await saver.setup()
        graph = chat_graph(saver)

        async def work() -> None:
            cfg = {"configurable": {"thread_id": f"pooler-{uuid.uuid4()}"}}
            for turn in range(turns):
                try:
                    await graph.ainvoke({"messages": [f"user {turn}"]}, cfg)
                except Exception as error:
                    failures[_kind(error)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(work() for _ in range(workers)))
        return failures, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--turns", type=int, default=200, help="per worker")
    parser.add_argument("--kwargs", type=json.loads, default={}, help="engine_kwargs, as JSON")
    args = parser.parse_args()
    is_async = make_url(args.url).get_dialect().is_async
    if is_async:
        failures, seconds = asyncio.run(
            async_trial(args.url, args.workers, args.turns, args.kwargs)
        )
    else:
        failures, seconds = sync_trial(args.url, args.workers, args.turns, args.kwargs)
    total = args.workers * args.turns
    print(f"{args.url} {args.kwargs or ''}")
    print(
        f"  {args.workers} {'tasks' if is_async else 'threads'} x {args.turns} turns: "
        f"{sum(failures.values())} of {total} failed, {total / seconds:.0f} turns/s"
    )
    for kind, count in failures.most_common():
        print(f"  {count:5d}  {kind[:240]}")


if __name__ == "__main__":
    main()
