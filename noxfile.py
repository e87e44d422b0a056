"""Developer sessions. ``nox`` runs what CI runs: ``tests`` (the whole
suite), ``langgraph`` (LangGraph's own graph tests on sqlsaver), the
version matrix, ``lowest`` and ``newest``, ``docs`` (the documentation
site, built strict), and ``galera`` (a 3-node MariaDB Galera cluster of its
own, on loopback: needs Debian's galera-4 and rsync).

The tests need the three databases: SQLite is embedded; PostgreSQL and
MySQL/MariaDB are taken from SQLSAVER_TEST_POSTGRES / SQLSAVER_TEST_MYSQL
(default: local servers), or started with Docker (testcontainers).

The version matrix: ``nox -s lowest`` installs every floor that
pyproject.toml declares, pinned with ``==``, on the lowest Python it
declares; ``nox -s newest`` the newest of everything on Python 3.12 and
3.13. Both run `MATRIX_TESTS`; ``tests`` runs the whole suite on the newest
set (with pip: a wheel test of its needs pip in the venv). The matrix
installs through uv (``pip install nox uv``): pip's resolver backtracks for
many minutes over the pinned floors, where uv takes seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import urllib.parse

import nox
from packaging.requirements import Requirement

nox.options.sessions = ["tests", "pooler", "galera", "langgraph", "lowest", "newest", "docs"]
nox.options.reuse_existing_virtualenvs = True
# A matrix session whose Python is missing fails, rather than being skipped
# while `nox` passes.
nox.options.error_on_missing_interpreters = True


DEFAULT_POSTGRES = "postgres@127.0.0.1:5432/test"  # conftest's
LOWEST_PYTHON = "3.10"  # requires-python's floor
NEWEST_PYTHONS = ("3.12", "3.13")  # 3.11 runs `tests`
# What the matrix runs: the savers on every kind of bind, LangGraph's
# behaviour and its conformance suite, and the SQLAlchemy internals we use.
MATRIX_TESTS = [
    "tests/test_binds.py",
    "tests/test_behaviour.py",
    "tests/test_conformance.py",
    "tests/test_sqlalchemy_private.py",
]


def _python(version: str) -> str:
    """An interpreter of that version: on PATH, else one pyenv installed but
    has not put on PATH (as on this project's machines); else the bare
    version, which nox reports missing."""
    for candidate in [
        shutil.which(f"python{version}"),
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python"))),
    ]:
        if candidate and subprocess.run([candidate, "-V"], capture_output=True).returncode == 0:
            return candidate
    return version


def floors() -> list[str]:
    """Every ``>=`` floor of pyproject.toml's dependencies and of the extras
    that the tests install, pinned with ``==``: read from the file, so that
    the matrix cannot drift from what it declares."""
    project = nox.project.load_toml("pyproject.toml")["project"]
    declared = list(project["dependencies"])
    for extra in ("sqlite", "postgres", "mysql", "demo", "test"):
        declared += project["optional-dependencies"][extra]
    pins = []
    for requirement in map(Requirement, declared):
        floor = [s.version for s in requirement.specifier if s.operator == ">="]
        if requirement.name != "sqlsaver" and floor:
            extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
            pins.append(f"{requirement.name}{extras}=={floor[0]}")
    return pins


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, on SQLite, PostgreSQL and MySQL/MariaDB."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


# The PostgreSQL tests that run through PgBouncer (`pooler`): the savers on
# every kind of bind, LangGraph's conformance suite, real graphs, and the
# concurrent clients of tests/test_pooler.py.
POOLER_TESTS = [
    "tests/test_pooler.py",
    "tests/test_conformance.py",
    "tests/test_graphs.py",
    "tests/test_binds.py",
    "tests/test_behaviour.py",
]
# Left out, as a pooler in transaction mode cannot give them what they need
# (pytest -k expressions):
POOLER_EXCLUDED = [
    # They end a client's connection by its server process id
    # (pg_terminate_backend): behind a pooler a client has no server process
    # of its own, and the id its driver knows is the pooler's (random).
    "not dead_kept_connections_are_replaced",
    "not dead_pooled_connections_are_replaced",
    # It points a client at another schema by a startup parameter
    # (search_path): a pooler's server sessions are shared, so PgBouncer
    # ignores it (ignore_startup_parameters) or refuses the client.
    "not database_not_set_up",
]


@nox.session
def pooler(session: nox.Session) -> None:
    """`POOLER_TESTS` on PostgreSQL through PgBouncer in transaction mode.

    scripts/pgbouncer.sh starts PgBouncer (Debian's ``pgbouncer``) on
    127.0.0.1:6439 in front of the server of SQLSAVER_TEST_POSTGRES, and
    stops it afterwards, also when a test fails. The tests reach the server
    through it with the same user and database.
    """
    session.install(".[test]")
    # user[:password]@host:port/database, as conftest takes it (nox's own
    # process has no SQLAlchemy to parse it with).
    server = urllib.parse.urlsplit(
        f"postgresql://{os.environ.get('SQLSAVER_TEST_POSTGRES', DEFAULT_POSTGRES)}"
    )
    port = os.environ.get("PGBOUNCER_PORT", "6439")
    env = {
        "PGBOUNCER_SERVER": f"{server.hostname}:{server.port or 5432}",
        "PGBOUNCER_USER": server.username or "postgres",
        "PGBOUNCER_PORT": port,
    }
    login = server.netloc.rpartition("@")[0]
    tests_env = {
        "SQLSAVER_TEST_POOLER": "1",
        "SQLSAVER_TEST_POSTGRES": f"{login}@127.0.0.1:{port}{server.path}",
    }
    session.run("scripts/pgbouncer.sh", "up", env=env, external=True)
    try:
        selected = " and ".join(["postgres", *POOLER_EXCLUDED])
        session.run("pytest", *(session.posargs or POOLER_TESTS), "-k", selected, env=tests_env)
    finally:
        session.run("scripts/pgbouncer.sh", "down", env=env, external=True)


@nox.session(python=_python(LOWEST_PYTHON), venv_backend="uv")
def lowest(session: nox.Session) -> None:
    """`MATRIX_TESTS` on the lowest versions declared (`floors`)."""
    session.install(".[test]", *floors())
    session.run("pytest", *(session.posargs or MATRIX_TESTS))


@nox.session(python=[_python(v) for v in NEWEST_PYTHONS], venv_backend="uv")
def newest(session: nox.Session) -> None:
    """`MATRIX_TESTS` on the newest version of everything."""
    session.install("--upgrade", ".[test]")
    session.run("pytest", *(session.posargs or MATRIX_TESTS))


@nox.session
def galera(session: nox.Session) -> None:
    """tests/cluster on a 3-node MariaDB Galera cluster, which
    scripts/galera.sh starts (fresh, under ``SQLSAVER_GALERA_DIR``, default
    /tmp/sqlsaver-galera) and takes down afterwards, also on failure."""
    session.install(".[test]")
    session.run("scripts/galera.sh", "up", external=True)
    try:
        urls = session.run("scripts/galera.sh", "urls", external=True, silent=True)
        env = {"SQLSAVER_TEST_GALERA": str(urls).strip()}
        session.run("pytest", "tests/cluster", *session.posargs, env=env)
    finally:
        session.run("scripts/galera.sh", "down", external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """The demo on the embedded SQLite default."""
    session.install(".[demo]")
    session.run("python", "-m", "sqlsaver", "demo", *session.posargs)


@nox.session(venv_backend="uv|virtualenv")
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml), into ``site/``.

    Strict: a broken link or anchor in a page, a reference to an API entry
    that does not exist, or a docstring that mkdocstrings cannot read fails
    the build. ``nox -s docs -- serve`` serves it while writing instead
    (``mkdocs serve``: rebuilt on every change).
    """
    session.install(".[docs]")
    # Material's notice about MkDocs 2 says nothing about this site.
    env = {"NO_MKDOCS_2_WARNING": "1"}
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", *session.posargs, env=env)
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs, env=env)


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

# Beside the lowest langgraph (1.0.6, 2026-01-12), the releases of its day:
# later langgraph-prebuilt 1.0.x import what 1.0.6 lacks (ExecutionInfo),
# and later langchain-core makes other message ids than its tests expect
# (they fail with InMemorySaver too). Revisit when the langgraph floor moves.
LANGGRAPH_LOWEST_COMPANIONS = ["langgraph-prebuilt==1.0.6", "langchain-core==1.2.7"]


@nox.session
@nox.parametrize("release", ["newest", "lowest"])
def langgraph(session: nox.Session, release: str) -> None:
    """LangGraph's own graph tests on sqlsaver, on all six URL kinds.

    Unpacks the installed langgraph's sdist (its ``tests/`` folder), rebinds
    the ``sync_checkpointer`` / ``async_checkpointer`` fixtures to sqlsaver
    (tests/upstream/sqlsaver_fixtures.py) and runs every test file that uses
    them: with the newest langgraph, and with the lowest langgraph and
    langgraph-checkpoint we declare. Extra arguments go to pytest
    (``-- -x``); ``SQLSAVER_LANGGRAPH_URLS=sqlite,asyncpg`` limits the URL
    kinds.
    """
    lowest = [p for p in floors() if p.startswith(("langgraph==", "langgraph-checkpoint=="))]
    lowest += LANGGRAPH_LOWEST_COMPANIONS
    session.install(".[all]", *LANGGRAPH_TEST_DEPS, *(lowest if release == "lowest" else []))
    session.run(
        "python",
        "tests/upstream/run.py",
        session.cache_dir,
        session.create_tmp(),
        *session.posargs,
    )
