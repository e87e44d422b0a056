"""How fast ``python -m sqlsaver copy`` moves checkpoints, and how much memory
it takes as the source grows.

    python benchmarks/transfer.py                      # N = 25,000, 50,000, 100,000
    python benchmarks/transfer.py --sizes 5000 --reps 1 --sqlite-saver 0

For each N it builds a SQLite source of N checkpoints (threads of
``--length`` checkpoints each: three channels, a message window, a counter
and notes every third step, two small pending writes a step): one thread
through the saver's own `put` / `put_writes`, copied under other thread ids
in SQL (as fast as a file copy, and the same rows a `put` stores). Then it
runs the CLI, a process of its own, into a PostgreSQL database it drops and
creates again each time (``SQLSAVER_BENCH_COPY_TARGET``, default the local
``sqlsaver_bench_copy``), and reads that process's peak RSS from ``wait4``. Medians of
``--reps`` runs; seconds are the copy's own, as it reports them ("process
s": the whole process, with its imports, ~1 s more). With ``--sqlite-saver
N``, one more source: SqliteSaver's file of N checkpoints (its values are
decoded and stored again). Prints a markdown table. Not part of the test
suite.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver, create_checkpoint, empty_checkpoint
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from sqlsaver import SQLSaver

TARGET = os.environ.get(
    "SQLSAVER_BENCH_COPY_TARGET", "postgresql+psycopg://postgres@127.0.0.1:5432/sqlsaver_bench_copy"
)


def one_thread(saver: BaseCheckpointSaver, length: int) -> None:
    """Thread ``template``: ``length`` checkpoints and their writes, by `put`."""
    config: Any = {"configurable": {"thread_id": "template", "checkpoint_ns": ""}}
    checkpoint = empty_checkpoint()
    for step in range(length):
        checkpoint = create_checkpoint(checkpoint, None, step)
        changed = ("messages", "count") + (("notes",) if step % 3 == 0 else ())
        new_versions = {}
        for channel in changed:
            current = checkpoint["channel_versions"].get(channel)
            version = saver.get_next_version(current, None)
            checkpoint["channel_versions"][channel] = new_versions[channel] = version
        checkpoint["channel_values"] = {
            "messages": [
                {"role": "user" if i % 2 else "ai", "content": f"message {step - i}: " + "x" * 80}
                for i in range(min(step, 10))
            ],
            "count": step,
            "notes": {"step": step - step % 3, "tags": ["a", "b"]},
        }
        metadata: Any = {"source": "loop", "step": step, "run_id": f"run-{step // 20}"}
        config = saver.put(config, checkpoint, metadata, new_versions)
        saver.put_writes(config, [("messages", f"reply {step}"), ("count", step + 1)], f"t{step}")


def replicate(path: Path, tables: list[str], threads: int) -> None:
    """Thread ``template``'s rows again under ``thread-0000``... ``threads``
    times (the template itself deleted)."""
    conn = sqlite3.connect(path)
    with conn:
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            others = ", ".join(c for c in columns if c != "thread_id")
            for n in range(threads):
                conn.execute(
                    f"INSERT INTO {table} (thread_id, {others}) "
                    f"SELECT ?, {others} FROM {table} WHERE thread_id = 'template'",
                    (f"thread-{n:04d}",),
                )
            conn.execute(f"DELETE FROM {table} WHERE thread_id = 'template'")
    conn.execute("VACUUM")
    conn.close()


def build(kind: str, path: Path, checkpoints: int, length: int) -> None:
    path.unlink(missing_ok=True)
    threads = max(1, checkpoints // length)
    if kind == "sqlsaver":
        with SQLSaver.from_url(f"sqlite:///{path}") as saver:
            saver.setup()
            one_thread(saver, length)
        tables = ["sqlsaver_checkpoints", "sqlsaver_blobs", "sqlsaver_writes"]
    else:
        from langgraph.checkpoint.sqlite import SqliteSaver

        conn = sqlite3.connect(path, check_same_thread=False)
        one_thread(SqliteSaver(conn), length)
        conn.close()
        tables = ["checkpoints", "writes"]
    replicate(path, tables, threads)


def fresh_target() -> None:
    url = make_url(TARGET)
    name = url.database
    # It is dropped and made again: a database of the benchmark's own only.
    assert name and "bench" in name, f"a scratch database with 'bench' in its name: {name}"
    admin = create_engine(
        url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()


def run(command: list[str]) -> tuple[float, float, str]:
    """Seconds, peak RSS (MB) and stdout of a process."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        raise SystemExit(f"{command} failed ({process.returncode}): {stdout}")
    return seconds, usage.ru_maxrss / 1024, stdout  # KiB on Linux


def copy_once(source: Path) -> dict[str, float]:
    fresh_target()
    command = [sys.executable, "-m", "sqlsaver", "copy", "--from", f"sqlite:///{source}"]
    seconds, rss, stdout = run([*command, "--to", TARGET])
    numbers = {
        name: float(re.search(pattern, stdout).group(1))  # type: ignore[union-attr]
        for name, pattern in {
            "checkpoints": r"(\d+) checkpoints",
            "rows": r"(\d+) rows in",
            "copy_seconds": r"rows in ([\d.]+) s",
        }.items()
    }
    return {**numbers, "seconds": seconds, "rss": rss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="25000,50000,100000", help="checkpoints, by commas")
    parser.add_argument("--length", type=int, default=1000, help="checkpoints a thread")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sqlite-saver", type=int, default=100_000, help="0: leave it out")
    parser.add_argument("--folder", default=tempfile.gettempdir())
    args = parser.parse_args()
    folder = Path(args.folder)
    floor = run([sys.executable, "-c", "import sqlsaver.__main__, sqlsaver.transfer, psycopg"])[1]
    print(f"(the CLI's imports alone: {floor:.0f} MB peak RSS)", file=sys.stderr)
    plan = [("sqlsaver", int(n)) for n in args.sizes.split(",")]
    if args.sqlite_saver:
        plan.append(("SqliteSaver", args.sqlite_saver))
    lines = [
        "| source | N | checkpoints | rows | seconds | rows/s | checkpoints/s | peak RSS MB "
        "| process s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, n in plan:
        source = folder / f"h4-copy-bench-{kind}-{n}.db"
        started = time.monotonic()
        build(kind.lower(), source, n, args.length)
        print(f"built {kind} {n} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        runs = []
        for _ in range(args.reps):
            runs.append(copy_once(source))
            print(f"  {kind} {n}: {runs[-1]}", file=sys.stderr)
        median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        seconds = median["copy_seconds"]  # the copy's own, as it reports it
        lines.append(
            f"| {kind} | {n:,} | {median['checkpoints']:,.0f} | {median['rows']:,.0f} | "
            f"{seconds:.1f} | {median['rows'] / seconds:,.0f} | "
            f"{median['checkpoints'] / seconds:,.0f} | {median['rss']:.0f} | "
            f"{median['seconds']:.1f} |"
        )
        source.unlink()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
