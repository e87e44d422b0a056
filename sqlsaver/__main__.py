"""``python -m sqlsaver``: the demo, and sqlsaver's schema in deployment.

    python -m sqlsaver demo                          # a real graph on ./sqlsaver-demo.db
    python -m sqlsaver upgrade --url URL             # bring sqlsaver's tables to head
    python -m sqlsaver upgrade --url URL --sql       # print the DDL instead (no database)
    python -m sqlsaver current --url URL             # the revision the tables are at
    python -m sqlsaver check --url URL               # exit 1 unless at this sqlsaver's head
    python -m sqlsaver downgrade --url URL --revision REV
    python -m sqlsaver history                       # the revisions this sqlsaver ships
    python -m sqlsaver sweep --url URL               # delete threads whose TTL expired

URLs are SQLAlchemy URLs, with a sync or an async driver alike.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import Connection

from sqlsaver import engines, migrate

T = TypeVar("T")
DEMO_URL = "sqlite:///sqlsaver-demo.db"


def on_connection(url: str, fn: Callable[[Connection], T]) -> T:
    """Run ``fn`` in one write transaction on ``url``, sync or async driver."""
    if engines.parse_url(url).get_dialect().is_async:

        async def run() -> T:
            engine = engines.async_engine(url, None)
            try:
                async with engine.begin() as conn:
                    return await conn.run_sync(fn)
            finally:
                await engine.dispose()

        return asyncio.run(run())
    engine = engines.sync_engine(url, None)
    try:
        with engine.begin() as conn:
            return fn(conn)
    finally:
        engine.dispose()


def demo(args: argparse.Namespace) -> int:
    """Run one turn of a small note-taking graph with a human approval step,
    persisted by sqlsaver; run it again and the thread picks up where it was."""
    from sqlsaver._demo import run_turn
    from sqlsaver.saver import SQLSaver

    with SQLSaver.from_url(args.url) as saver:
        saver.setup()
        run_turn(saver, args.thread, print, args.pause)
    return 0


def upgrade(args: argparse.Namespace) -> int:
    if args.sql:  # offline: Alembic renders the DDL for the URL's dialect
        from alembic import command

        command.upgrade(migrate.alembic_config(url=args.url), args.revision, sql=True)
        return 0
    on_connection(args.url, lambda conn: migrate.upgrade(conn, args.revision))
    print(f"sqlsaver tables: {on_connection(args.url, migrate.current)}")
    return 0


def downgrade(args: argparse.Namespace) -> int:
    on_connection(args.url, lambda conn: migrate.downgrade(conn, args.revision))
    print(f"sqlsaver tables: {on_connection(args.url, migrate.current) or 'none (base)'}")
    return 0


def current(args: argparse.Namespace) -> int:
    revision = on_connection(args.url, migrate.current)
    print(f"{revision or 'none'} ({migrate.describe(revision)})")
    return 0


def check(args: argparse.Namespace) -> int:
    revision = on_connection(args.url, migrate.current)
    print(f"{revision or 'none'} ({migrate.describe(revision)})")
    return 0 if revision == migrate.HEAD else 1


def sweep(args: argparse.Namespace) -> int:
    """Delete (or prune) expired threads: a cron job's TTL sweep."""
    from sqlsaver.aio import AsyncSQLSaver
    from sqlsaver.saver import SQLSaver

    def report(total: int) -> None:
        print(f"swept {total} expired threads so far", file=sys.stderr)

    ttl = {"strategy": args.strategy}
    limit = args.limit or sys.maxsize
    if engines.parse_url(args.url).get_dialect().is_async:

        async def run() -> int:
            async with AsyncSQLSaver.from_url(args.url, ttl=ttl) as saver:
                return await saver.asweep_ttl(limit, report)

        handled = asyncio.run(run())
    else:
        with SQLSaver.from_url(args.url, ttl=ttl) as saver:
            handled = saver.sweep_ttl(limit, report)
    print(f"swept {handled} expired threads ({args.strategy})")
    return 0


def history(args: argparse.Namespace) -> int:
    from alembic import command

    command.history(migrate.alembic_config(), verbose=args.verbose)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m sqlsaver", description=(__doc__ or "").split("\n", 1)[0]
    )
    commands = top.add_subparsers(dest="command", required=True)

    run_demo = commands.add_parser("demo", help="run a small LangGraph graph persisted by sqlsaver")
    run_demo.add_argument("--url", default=DEMO_URL, help=f"database URL (default {DEMO_URL})")
    run_demo.add_argument("--thread", default="demo", help="thread id (default 'demo')")
    run_demo.add_argument(
        "--pause", action="store_true", help="stop at the approval; the next run resumes it"
    )
    run_demo.set_defaults(run=demo)

    def with_url(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help)
        command.add_argument("--url", required=True, help="SQLAlchemy database URL")
        return command

    run_upgrade = with_url("upgrade", "upgrade sqlsaver's tables (default: to head)")
    run_upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    run_upgrade.add_argument(
        "--sql", action="store_true", help="print the DDL for the URL's dialect; touch nothing"
    )
    run_upgrade.set_defaults(run=upgrade)
    run_downgrade = with_url("downgrade", "downgrade sqlsaver's tables ('base' drops them)")
    run_downgrade.add_argument("--revision", required=True, help="target revision, or base")
    run_downgrade.set_defaults(run=downgrade)
    with_url("current", "show the revision sqlsaver's tables are at").set_defaults(run=current)
    with_url("check", "exit 1 unless the tables are at this sqlsaver's head").set_defaults(
        run=check
    )
    run_sweep = with_url("sweep", "delete (or prune) threads whose TTL has expired")
    run_sweep.add_argument(
        "--strategy",
        choices=["delete", "keep_latest"],
        default="delete",
        help="delete expired threads (default), or keep their latest checkpoints",
    )
    run_sweep.add_argument("--limit", type=int, help="at most this many threads (default: all)")
    run_sweep.set_defaults(run=sweep)
    run_history = commands.add_parser("history", help="list the revisions this sqlsaver ships")
    run_history.add_argument("--verbose", action="store_true")
    run_history.set_defaults(run=history)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Alembic reports each revision it runs ("Running upgrade 0001 -> 0002"):
    # the progress of a long upgrade.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    progress = logging.getLogger("alembic.runtime.migration")
    progress.setLevel(logging.INFO)
    progress.addFilter(lambda record: record.getMessage().startswith("Running"))
    try:
        code: int = args.run(args)
    except (ValueError, migrate.SchemaError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
