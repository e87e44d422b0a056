"""Fixtures for the tests on a 3-node MariaDB Galera cluster.

The nodes come from ``SQLSAVER_TEST_GALERA``: three host parts of URLs,
comma-separated (``scripts/galera.sh urls`` prints them). ``nox -s galera``
starts the cluster with ``scripts/galera.sh``, sets it, runs these tests
and takes the cluster down. Each test gets a database of its own.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool

from sqlsaver import SQLSaver
from sqlsaver.execution import runner

NODES = [n for n in os.environ.get("SQLSAVER_TEST_GALERA", "").split(",") if n]
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "galera.sh"


def node_url(node: int, database: str, driver: str = "pymysql") -> str:
    """The URL of ``database`` on node ``node`` (0-2) through ``driver``."""
    url = make_url(f"mysql+{driver}://{NODES[node]}").set(database=database)
    return url.render_as_string(hide_password=False)


def fresh_database(prefix: str) -> str:
    """A new, empty database on the cluster (its DDL replicates)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(node_url(0, ""), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return name


@pytest.fixture
def database() -> Iterator[str]:
    """A database of the test's own, set up (from node 1)."""
    if len(NODES) != 3:
        pytest.fail("SQLSAVER_TEST_GALERA must name the cluster's three nodes", pytrace=False)
    name = fresh_database("g")
    with SQLSaver.from_url(node_url(0, name)) as saver:
        saver.setup()
    yield name


class Retries(logging.Handler):
    """Counts the runner's retries (its DEBUG records), and their errors."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def count(self) -> int:
        return len(self.messages)

    @property
    def deepest(self) -> int:
        """The most attempts one operation failed (0: none failed)."""
        return max((int(m.split("attempt ")[1].split()[0]) for m in self.messages), default=0)

    def __str__(self) -> str:
        return f"{self.count} retries, up to {self.deepest} failed attempts of one operation"


@pytest.fixture
def retries() -> Iterator[Retries]:
    """The runner's retries during the test."""
    handler = Retries()
    previous = runner.log.level
    runner.log.setLevel(logging.DEBUG)
    runner.log.addHandler(handler)
    try:
        yield handler
    finally:
        runner.log.removeHandler(handler)
        runner.log.setLevel(previous)
