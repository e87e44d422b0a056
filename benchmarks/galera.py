"""sqlsaver on a 3-node MariaDB Galera cluster: turns per second per node.

    scripts/galera.sh up && python benchmarks/galera.py; scripts/galera.sh down

Writers on every node run graph turns at once (the cluster tests' graph,
tests/cluster/workload.py: four checkpoints and a dozen writes a turn), and
the table says, per scenario, each node's turns per second, the runner's
retries (certification conflicts) and the errors:

- own threads: each writer its own threads;
- alternating: every thread's turns go node 1, 2, 3, 1, ...;
- same threads: every node's writers on the same threads at once, with a
  TTL (each write then upserts the thread's row: conflicts);
- no sync wait: own threads without ``wsrep_sync_wait`` (what it costs);
- node 3 killed: own threads, node 3 ``kill -9``ed a third of the way
  (last: the cluster then has two nodes).

The nodes come from SQLSAVER_TEST_GALERA (``scripts/galera.sh urls``).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from sqlsaver import SQLSaver, galera
from sqlsaver.execution import runner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "cluster"))  # one graph for tests and numbers
import workload  # noqa: E402

SCRIPT = ROOT / "scripts" / "galera.sh"


class Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def nodes() -> list[str]:
    found = (
        os.environ.get("SQLSAVER_TEST_GALERA")
        or subprocess.run(
            [str(SCRIPT), "urls"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    return found.split(",")


def fresh(hosts: list[str]) -> list[str]:
    """A new database, set up: its URL on each node."""
    name = f"bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"mysql+pymysql://{hosts[0]}", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    urls = [f"mysql+pymysql://{h.rsplit('/', 1)[0]}/{name}" for h in hosts]
    with SQLSaver.from_url(urls[0]) as saver:
        saver.setup()
    return urls


def scenario(
    hosts: list[str],
    writers: int,
    turns: int,
    node_of: Callable[[str, int, int], int],
    thread_of: Callable[[int, int], str],
    kill_after: float | None = None,
    **options: Any,
) -> tuple[list[float], int, Counter[int], float]:
    """Writers ``writers`` per node, ``turns`` turns each, at once: turns/s
    per node (its turns over the time to its last one), retries, errors per
    node, seconds in all."""
    urls = fresh(hosts)
    savers = [SQLSaver.from_url(u, **options) for u in urls]
    graphs = [workload.graph(s) for s in savers]
    done: Counter[int] = Counter()
    errors: Counter[int] = Counter()
    finished = [0.0, 0.0, 0.0]  # when each node's last turn ended
    total = 3 * writers * turns
    third = threading.Event()
    counter = itertools.count()

    def writer(home: int, index: int) -> None:
        thread_id = thread_of(home, index)
        for turn in range(turns):
            node = node_of(thread_id, home, turn)
            tag = next(counter)
            try:
                graphs[node].invoke(workload.turn_input(thread_id, tag), workload.config(thread_id))
            except Exception:
                errors[node] += 1
                if node == 2 and kill_after is not None:
                    return
                continue
            done[node] += 1
            finished[node] = time.perf_counter()
            if sum(done.values()) >= total * (kill_after or 2):
                third.set()

    retries = Count()
    runner.log.setLevel(logging.DEBUG)
    runner.log.addHandler(retries)
    started = time.perf_counter()
    with ThreadPoolExecutor(3 * writers) as pool:
        futures = [pool.submit(writer, n, i) for n in range(3) for i in range(writers)]
        if kill_after is not None:
            third.wait(300)
            subprocess.run([str(SCRIPT), "kill", "3"], check=True, capture_output=True)
        for future in futures:
            future.result()
    elapsed = time.perf_counter() - started
    runner.log.removeHandler(retries)
    for saver in savers:
        saver.close()
    rates = [done[n] / (finished[n] - started) if done[n] else 0.0 for n in range(3)]
    return rates, retries.count, errors, elapsed


def latency(hosts: list[str], turns: int) -> tuple[float, float]:
    """Milliseconds per turn of one writer alone, with and without
    ``wsrep_sync_wait``: what the causal wait of each read costs."""
    out = []
    original = galera.wait_for_writes
    for sync in (True, False):
        if not sync:
            galera.wait_for_writes = lambda cursor, info: None  # type: ignore[assignment]
        try:
            with SQLSaver.from_url(fresh(hosts)[0]) as saver:
                graph = workload.graph(saver)
                graph.invoke(workload.turn_input("warm", 0), workload.config("warm"))
                started = time.perf_counter()
                for turn in range(turns):
                    graph.invoke(workload.turn_input("alone", turn), workload.config("alone"))
                out.append((time.perf_counter() - started) / turns * 1000)
        finally:
            galera.wait_for_writes = original  # type: ignore[assignment]
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=3, help="writers per node")
    parser.add_argument("--turns", type=int, default=20, help="turns per writer")
    parser.add_argument("--no-kill", action="store_true", help="leave node 3 alive")
    args = parser.parse_args()
    hosts = nodes()
    w, t = args.writers, args.turns

    def own(home: int, i: int) -> str:
        return f"own-{home}-{i}"

    def shared(home: int, i: int) -> str:
        return f"shared-{i}"

    runs: list[tuple[str, dict[str, Any]]] = [
        ("own threads", dict(node_of=lambda _t, home, _n: home, thread_of=own)),
        ("alternating", dict(node_of=lambda _t, home, turn: (home + turn) % 3, thread_of=own)),
        (
            "same threads, TTL",
            dict(node_of=lambda _t, home, _n: home, thread_of=shared, ttl={"default_ttl": 60}),
        ),
        ("no sync wait", dict(node_of=lambda _t, home, _n: home, thread_of=own)),
    ]
    if not args.no_kill:
        killed = dict(node_of=lambda _t, home, _n: home, thread_of=own, kill_after=1 / 3)
        runs.append(("node 3 killed", killed))
    with_wait, without = latency(hosts, 3 * t)
    print(f"one writer alone, ms a turn: {with_wait:.1f} with sync wait, {without:.1f} without")
    print(f"{w} writers per node, {t} turns each; turns/s per node")
    print("| scenario | node 1 | node 2 | node 3 | retries | errors (node) | seconds |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for name, kwargs in runs:
        original = galera.wait_for_writes
        if name == "no sync wait":
            galera.wait_for_writes = lambda cursor, info: None  # type: ignore[assignment]
        try:
            rates, retries, errors, elapsed = scenario(hosts, w, t, **kwargs)
        finally:
            galera.wait_for_writes = original  # type: ignore[assignment]
        shown_errors = ", ".join(f"{c} ({n + 1})" for n, c in sorted(errors.items())) or "0"
        cells = " | ".join(f"{r:.1f}" for r in rates)
        print(f"| {name} | {cells} | {retries} | {shown_errors} | {elapsed:.1f} |", flush=True)


if __name__ == "__main__":
    main()
