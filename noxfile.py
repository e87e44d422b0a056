"""Developer sessions: ``nox -s tests`` is the test suite CI runs.

The tests need the three databases: SQLite is embedded; PostgreSQL and
MySQL/MariaDB are taken from SQLSAVER_TEST_POSTGRES / SQLSAVER_TEST_MYSQL
(default: local servers), or started with Docker (testcontainers).
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, on SQLite, PostgreSQL and MySQL/MariaDB."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The demo on the embedded SQLite default."""
    session.install(".[demo]")
    session.run("python", "-m", "sqlsaver", "demo", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """sqlsaver against the official savers (``-- --quick`` for a smoke run).

    Results: benchmarks/results/bench-latest.md and .png. Never part of
    ``tests``: timings are for reading, not for pass/fail.
    """
    session.install(".[bench]")
    session.run("python", "benchmarks/bench.py", *session.posargs)


# What LangGraph's graph tests import beyond sqlsaver[all] (its test group).
LANGGRAPH_TEST_DEPS = [
    "pytest",
    "pytest-mock",
    "syrupy",
    "httpx",
    "anyio",
    "langchain-core>=1",
    "langgraph-prebuilt",
    "langgraph-checkpoint-sqlite",
    "langgraph-checkpoint-postgres",
    "psycopg-pool",
    "pycryptodome",
    "redis",
    "pytest-xdist",
]


@nox.session
def langgraph(session: nox.Session) -> None:
    """LangGraph's own graph tests on sqlsaver, on all six URL kinds.

    Unpacks the installed langgraph's sdist (its ``tests/`` folder), rebinds
    the ``sync_checkpointer`` / ``async_checkpointer`` fixtures to sqlsaver
    (tests/upstream/sqlsaver_fixtures.py) and runs every test file that uses
    them. Extra arguments go to pytest (``-- -x``, ``-- -k interrupt``);
    ``SQLSAVER_LANGGRAPH_URLS=sqlite,asyncpg`` limits the URL kinds.
    """
    session.install(".[all]", *LANGGRAPH_TEST_DEPS)
    session.run(
        "python",
        "tests/upstream/run.py",
        session.cache_dir,
        session.create_tmp(),
        *session.posargs,
    )
