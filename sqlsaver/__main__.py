"""``python -m sqlsaver``: the demo, and schema upgrades for deployments.

python -m sqlsaver demo                      # a real graph on ./sqlsaver-demo.db
python -m sqlsaver demo --url postgresql+psycopg://postgres@localhost/test
python -m sqlsaver upgrade --url URL         # bring sqlsaver's tables to head
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlsaver import migrate
from sqlsaver.saver import SQLSaver

DEMO_URL = "sqlite:///sqlsaver-demo.db"


def demo(url: str, thread_id: str, pause: bool) -> None:
    """Run one turn of a small note-taking graph with a human approval step,
    persisted by sqlsaver; run it again and the thread picks up where it was."""
    from sqlsaver._demo import run_turn

    with SQLSaver.from_url(url) as saver:
        saver.setup()
        run_turn(saver, thread_id, print, pause)


def upgrade(url: str, revision: str) -> None:
    """Upgrade sqlsaver's tables at ``url`` to ``revision``."""
    from sqlsaver.base import sync_engine

    engine = sync_engine(url, None)
    try:
        with engine.begin() as conn:
            migrate.upgrade(conn, revision)
    finally:
        engine.dispose()
    print(f"sqlsaver tables at {engine.url.render_as_string(hide_password=True)} are at {revision}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqlsaver", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run a small LangGraph graph persisted by sqlsaver")
    run_demo.add_argument("--url", default=DEMO_URL, help=f"database URL (default {DEMO_URL})")
    run_demo.add_argument("--thread", default="demo", help="thread id (default 'demo')")
    run_demo.add_argument(
        "--pause", action="store_true", help="stop at the approval; the next run resumes it"
    )
    run_upgrade = commands.add_parser("upgrade", help="upgrade sqlsaver's tables")
    run_upgrade.add_argument("--url", required=True, help="database URL (a sync driver)")
    run_upgrade.add_argument("--revision", default="head")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            demo(args.url, args.thread, args.pause)
        else:
            upgrade(args.url, args.revision)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
