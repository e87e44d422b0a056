"""Developer sessions: ``nox -s tests`` is the test suite CI runs.

The tests need the three databases: SQLite is embedded; PostgreSQL and
MySQL/MariaDB are taken from SQLSAVER_TEST_POSTGRES / SQLSAVER_TEST_MYSQL
(default: local servers), or started with Docker (testcontainers).
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from pathlib import Path

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
    here = Path.cwd()
    version = session.run(
        "python", "-c", "import langgraph.version as v; print(v.__version__)", silent=True
    )
    version = str(version).strip()
    src = Path(session.cache_dir) / f"langgraph-{version}"
    if not (src / "tests" / "conftest.py").exists():
        with tempfile.TemporaryDirectory() as download:
            session.run(
                "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
                "--dest", download, f"langgraph=={version}",
            )
            (archive,) = Path(download).glob("langgraph-*.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(session.cache_dir, filter="data")
    # A fresh copy each run: the conftest gets one line of ours appended.
    work = Path(session.create_tmp()) / "langgraph"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    conftest = work / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text() + "\n\nfrom sqlsaver_fixtures import *  # noqa: E402,F403\n"
    )
    files = sorted(
        str(path.relative_to(work))
        for path in (work / "tests").glob("test_*.py")
        if re.search(r"\b(sync|async)_checkpointer\b", path.read_text())
    )
    report = here / ".nox" / "langgraph-junit.xml"
    session.chdir(work)
    session.run(
        "pytest", *files, "-k", "sqlsaver_", "-p", "no:cacheprovider", "-q", "-n", "4",
        f"--junitxml={report}", *session.posargs,
        env={"PYTHONPATH": str(here / "tests" / "upstream"), "NO_DOCKER": "true"},
        success_codes=[0, 1],
    )
    session.chdir(here)
    session.run("python", "tests/upstream/summary.py", str(report))
