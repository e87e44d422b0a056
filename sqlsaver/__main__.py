"""The command line, ``python -m sqlsaver`` (or ``sqlsaver``): the demo, and
sqlsaver's schema in deployment. `parser` builds it all (the docs render
each command's help from it); `main` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import URL, Connection

import sqlsaver
from sqlsaver import _cli_errors, engines, migrate, schemas
from sqlsaver._cli_progress import CopyProgress, MigrationProgress, SweepProgress

T = TypeVar("T")
DEMO_URL = "sqlite:///sqlsaver-demo.db"

DESCRIPTION = """\
sqlsaver: a LangGraph checkpointer on SQLAlchemy. These commands run its
demo, and manage its tables in deployment. A URL is a SQLAlchemy database
URL, with a sync or an async driver alike: sqlite:///file.db,
postgresql+psycopg://user:password@host/db, mysql+pymysql://user@host/db.

Exit status: 0 done, 1 "not at head" (check), 2 an error."""

EXAMPLES = """\
examples:
  python -m sqlsaver demo
  python -m sqlsaver upgrade --url postgresql+psycopg://app@db.example/app
  python -m sqlsaver upgrade --url postgresql+psycopg://app@db.example/app --schema agents
  python -m sqlsaver upgrade --url mysql+pymysql://app@db.example/app --sql > ddl.sql
  python -m sqlsaver check --url sqlite:///checkpoints.db || echo "needs upgrade"
  python -m sqlsaver downgrade --url sqlite:///checkpoints.db --revision 0003
  python -m sqlsaver sweep --url sqlite:///checkpoints.db --limit 1000
  python -m sqlsaver copy --from sqlite:///checkpoints.db --to postgresql+psycopg://app@db/app"""


def on_connection(url: str, fn: Callable[[Connection], T], schema: str | None = None) -> T:
    """Run ``fn`` in one write transaction on ``url``, sync or async driver,
    with sqlsaver's tables in ``schema`` (`sqlsaver.schemas`)."""
    parsed = engines.parse_url(url)
    schemas.check_backend(schema, parsed.get_backend_name())

    def in_schema(conn: Connection) -> T:
        with schemas.on_connection(conn, schema):
            return fn(conn)

    if parsed.get_dialect().is_async:

        async def run() -> T:
            engine = engines.async_engine(url, None)
            try:
                async with engine.begin() as conn:
                    return await conn.run_sync(in_schema)
            finally:
                await engine.dispose()

        return asyncio.run(run())
    engine = engines.sync_engine(url, None)
    try:
        with engine.begin() as conn:
            return in_schema(conn)
    finally:
        engine.dispose()


def demo(args: argparse.Namespace) -> int:
    """Run one turn of a small note-taking graph with a human approval step,
    persisted by sqlsaver; run it again and the thread picks up where it was."""
    from sqlsaver._demo import run_turn
    from sqlsaver.saver import SQLSaver

    _cli_errors.require_sqlite_folder(engines.parse_url(args.url))
    with SQLSaver.from_url(args.url) as saver:
        saver.setup()
        run_turn(saver, args.thread, print, args.pause)
    return 0


def _steps(start: str | None, target: str) -> int | None:
    """How many revisions lie between two (None: cannot say, e.g. "+1")."""
    position = {None: 0, "base": 0, "head": len(migrate.REVISIONS)}
    position.update({r: i + 1 for i, r in enumerate(migrate.REVISIONS)})
    if start not in position or target not in position:
        return None
    return abs(position[target] - position[start])


def _migrate(args: argparse.Namespace, command: Callable[[Connection], None]) -> str | None:
    """Run an upgrade or downgrade ``command``, reporting each revision."""
    start = on_connection(args.url, migrate.current, args.schema)
    handler = MigrationProgress(_steps(start, args.revision))
    # Alembic logs each revision it runs ("Running upgrade 0001 -> 0002"):
    # those records, and only those, go to the handler.
    alembic_log = logging.getLogger("alembic.runtime.migration")
    alembic_log.setLevel(logging.INFO)
    alembic_log.propagate = False
    alembic_log.addHandler(handler)
    try:
        on_connection(args.url, command, args.schema)
    finally:
        alembic_log.removeHandler(handler)
        alembic_log.propagate = True
        handler.progress.finish()
    return on_connection(args.url, migrate.current, args.schema)


def upgrade(args: argparse.Namespace) -> int:
    if args.sql:  # offline: Alembic renders the DDL for the URL's dialect
        from alembic import command

        config = migrate.alembic_config(url=args.url, schema=args.schema)
        command.upgrade(config, args.revision, sql=True)
        return 0
    _cli_errors.require_sqlite_folder(engines.parse_url(args.url))
    revision = _migrate(args, lambda conn: migrate.upgrade(conn, args.revision))
    print(f"sqlsaver tables: {revision}")
    return 0


def downgrade(args: argparse.Namespace) -> int:
    _cli_errors.require_sqlite_file(engines.parse_url(args.url))
    revision = _migrate(args, lambda conn: migrate.downgrade(conn, args.revision))
    print(f"sqlsaver tables: {revision or 'none (base)'}")
    return 0


def current(args: argparse.Namespace) -> int:
    _cli_errors.require_sqlite_file(engines.parse_url(args.url))
    revision = on_connection(args.url, migrate.current, args.schema)
    print(f"{revision or 'none'} ({migrate.describe(revision)})")
    return 0


def check(args: argparse.Namespace) -> int:
    path = _cli_errors.sqlite_file(engines.parse_url(args.url))
    if path is not None and not path.exists():  # not set up; and left uncreated
        print(f"none (not set up: no SQLite database at {path})")
        return 1
    revision = on_connection(args.url, migrate.current, args.schema)
    print(f"{revision or 'none'} ({migrate.describe(revision)})")
    return 0 if revision == migrate.HEAD else 1


def sweep(args: argparse.Namespace) -> int:
    """Delete (or prune) expired threads: a cron job's TTL sweep."""
    from sqlsaver.aio import AsyncSQLSaver
    from sqlsaver.saver import SQLSaver

    url = engines.parse_url(args.url)
    _cli_errors.require_sqlite_file(url)  # nothing to sweep in a file not there
    ttl = {"strategy": args.strategy}
    limit = args.limit or sys.maxsize  # 0 is refused by `_positive`
    report = SweepProgress(args.limit)
    try:
        if url.get_dialect().is_async:

            async def run() -> int:
                async with AsyncSQLSaver.from_url(args.url, ttl=ttl, schema=args.schema) as saver:
                    return await saver.asweep_ttl(limit, report)

            handled = asyncio.run(run())
        else:
            with SQLSaver.from_url(args.url, ttl=ttl, schema=args.schema) as saver:
                handled = saver.sweep_ttl(limit, report)
    finally:
        report.finish()
    print(f"swept {handled} expired threads ({args.strategy})")
    return 0


def copy(args: argparse.Namespace) -> int:
    """Copy threads from a sqlsaver database or an official saver's into sqlsaver."""
    from sqlsaver.transfer import copy_threads

    # Each database reached first, so that a failure names the right one.
    _cli_errors.reach(engines.parse_url(args.source), "--from")
    _cli_errors.reach(engines.parse_url(args.target), "--to")
    _cli_errors.require_sqlite_folder(engines.parse_url(args.target), "--to")
    bar = CopyProgress()
    try:
        report = copy_threads(
            args.source,
            args.target,
            thread_ids=args.thread or None,
            source_kind=args.source_kind,
            dry_run=args.dry_run,
            progress=bar,
            source_schema=args.source_schema,
            target_schema=args.target_schema,
        )
    finally:
        bar.finish()
    print(report)
    return 0


def history(args: argparse.Namespace) -> int:
    from alembic import command

    command.history(migrate.alembic_config(), verbose=args.verbose)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of at least 1 (leave --limit out to sweep "
            "every expired thread)"
        )
    return value


def _schema_name(text: str) -> str:
    try:
        return str(schemas.check_name(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    """The whole command line: every command, its description and options."""
    # -v after the command as well as before it: where users type it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, show the full traceback",
    )
    formatter = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="python -m sqlsaver",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=formatter,
        parents=[common],
    )
    top.add_argument("--version", action="version", version=f"sqlsaver {sqlsaver.__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, help: str, description: str, url: bool = True
    ) -> argparse.ArgumentParser:
        made = commands.add_parser(
            name, help=help, description=description, formatter_class=formatter, parents=[common]
        )
        if url:
            made.add_argument("--url", required=True, help="SQLAlchemy database URL")
            made.add_argument(
                "--schema",
                type=_schema_name,
                help="the PostgreSQL schema or MySQL database sqlsaver's tables are in "
                "(a saver's schema=; default: the URL's own)",
            )
        return made

    run_demo = command(
        "demo",
        "run a small LangGraph graph persisted by sqlsaver",
        "Run one turn of a small note-taking graph with a human approval step,\n"
        "persisted by sqlsaver (it creates the tables). Run it again and the\n"
        "thread picks up where it was. Needs langgraph (pip install 'sqlsaver[demo]').",
        url=False,
    )
    run_demo.add_argument("--url", default=DEMO_URL, help=f"database URL (default {DEMO_URL})")
    run_demo.add_argument("--thread", default="demo", help="thread id (default 'demo')")
    run_demo.add_argument(
        "--pause", action="store_true", help="stop at the approval; the next run resumes it"
    )
    run_demo.set_defaults(run=demo)

    run_upgrade = command(
        "upgrade",
        "create or upgrade sqlsaver's tables (default: to head)",
        "Create sqlsaver's tables, or upgrade them to a revision (default: the\n"
        "head of this sqlsaver), one revision at a time, under a lock: safe while\n"
        "other processes run setup(). Creates a SQLite file that does not exist.",
    )
    run_upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    run_upgrade.add_argument(
        "--sql", action="store_true", help="print the DDL for the URL's dialect; touch nothing"
    )
    run_upgrade.set_defaults(run=upgrade)
    run_downgrade = command(
        "downgrade",
        "downgrade sqlsaver's tables ('base' drops them)",
        "Downgrade sqlsaver's tables to an older revision, keeping what they\n"
        "hold; to 'base' drops them. The history command lists the revisions.",
    )
    run_downgrade.add_argument("--revision", required=True, help="target revision, or base")
    run_downgrade.set_defaults(run=downgrade)
    command(
        "current",
        "show the revision sqlsaver's tables are at",
        "Print the revision sqlsaver's tables are at, and what it means to this\n"
        "sqlsaver. A SQLite file that does not exist is an error (and is not created).",
    ).set_defaults(run=current)
    command(
        "check",
        "exit 1 unless the tables are at this sqlsaver's head",
        "Print the revision sqlsaver's tables are at; exit 0 if it is this\n"
        "sqlsaver's head, 1 if not (not set up, behind, or newer), 2 on an error\n"
        "(such as a server that cannot be reached). A SQLite file that does not\n"
        "exist is 'not set up', exit 1, and is not created.",
    ).set_defaults(run=check)
    run_sweep = command(
        "sweep",
        "delete (or prune) threads whose TTL has expired",
        "Delete the threads whose TTL has expired, 100 per transaction (or keep\n"
        "their latest checkpoints): for a cron job. Several sweepers may run at\n"
        "once. A SQLite file that does not exist is an error (and is not created).",
    )
    run_sweep.add_argument(
        "--strategy",
        choices=["delete", "keep_latest"],
        default="delete",
        help="delete expired threads (default), or keep their latest checkpoints",
    )
    run_sweep.add_argument(
        "--limit", type=_positive, help="at most this many threads, 1 or more (default: all)"
    )
    run_sweep.set_defaults(run=sweep)
    run_copy = command(
        "copy",
        "copy threads into sqlsaver, from sqlsaver or an official saver",
        "Copy threads (all, or each --thread) from a database of sqlsaver's or of an\n"
        "official saver (PostgresSaver, SqliteSaver, the MySQL saver: told apart by\n"
        "its tables) into a sqlsaver database, which is set up on the way. Safe to\n"
        "run again after a crash or Ctrl-C: it goes on, and never copies a row twice.\n"
        "Each thread is verified on the target. Values are copied as the serializer's\n"
        "bytes: open the target with the serializer the source was written with.",
        url=False,
    )
    run_copy.add_argument("--from", dest="source", required=True, help="the source's URL")
    run_copy.add_argument("--to", dest="target", required=True, help="the target's URL")
    run_copy.add_argument(
        "--from-schema",
        dest="source_schema",
        type=_schema_name,
        help="the schema the source's tables are in (default: the URL's own)",
    )
    run_copy.add_argument(
        "--to-schema",
        dest="target_schema",
        type=_schema_name,
        help="the schema to copy into, which must exist (default: the URL's own)",
    )
    run_copy.add_argument(
        "--thread", action="append", help="a thread to copy (repeat it; default: every thread)"
    )
    run_copy.add_argument(
        "--source-kind",
        choices=["sqlsaver", "postgres", "mysql", "sqlite"],
        help="which checkpoints to read, where the source holds two kinds",
    )
    run_copy.add_argument(
        "--dry-run", action="store_true", help="count what would be copied; write nothing"
    )
    run_copy.set_defaults(run=copy)
    command(
        "history",
        "list the revisions this sqlsaver ships",
        "List the revisions of sqlsaver's tables that this sqlsaver ships, newest\n"
        "first (with -v, each one's details).",
        url=False,
    ).set_defaults(run=history)
    return top


def _failed_on(args: argparse.Namespace) -> tuple[URL | None, str]:
    """The URL a failure is about, and the option that gave it: ``--url``;
    for ``copy``, ``--from`` (`copy` reaches each database first, so that
    a failure to connect names ``--from`` or ``--to``)."""
    option = "--url" if getattr(args, "url", None) else "--from"
    url = getattr(args, "url", None) or getattr(args, "source", None)
    try:
        return (engines.parse_url(url) if url else None), option
    except ValueError:
        return None, option


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; the exit status."""
    args = parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except BrokenPipeError:
        # Its reader has gone (`... | head`): nothing more to say, and
        # nowhere to say it; stdout to devnull, so the exit's flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = None if args.verbose else _cli_errors.explain(error, *_failed_on(args))
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
