"""``python -m sqlsaver``, run as a user runs it (a subprocess), on real
SQLite, PostgreSQL and MySQL/MariaDB databases.

1. Offline ``--sql`` DDL per dialect (no database); upgrade / check /
   current / downgrade, sync and async URLs.
"""

from __future__ import annotations

import re
import subprocess
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import Backend
from sqlalchemy import text
from test_migrations import (
    HEAD,
    REVISIONS,
    SQLSAVER_TABLES,
    VERSION_TABLE,
    at_once,
    cli,
    engine_on,
    fresh,
    schema,
    schema_diff,
)

from sqlsaver import migrate

__all__ = ["fresh"]  # the fixture, imported for pytest


@pytest.mark.parametrize(
    "url, types, absent",
    [
        ("postgresql+psycopg://x@nohost.invalid/db", ["BYTEA", "JSONB", "TEXT"], ["BLOB"]),
        ("mysql+pymysql://x@nohost.invalid/db", ["VARBINARY(1020)", "LONGBLOB", "JSON"], ["BYTEA"]),
        ("sqlite:////nonexistent/dir/x.db", ["BLOB", "TEXT", "JSON"], ["BYTEA", "VARBINARY"]),
    ],
)
def test_cli_offline_sql_needs_no_database(url: str, types: list[str], absent: list[str]) -> None:
    done = cli("upgrade", "--url", url, "--sql")
    assert done.returncode == 0, done.stderr
    ddl = done.stdout
    for table in SQLSAVER_TABLES:
        assert re.search(rf"CREATE TABLE `?{table}`? \(", ddl), table
    assert "ix_sqlsaver_checkpoints_checkpoint_id" in ddl
    assert re.search(rf"UPDATE {VERSION_TABLE} SET version_num='{HEAD}'", ddl)
    assert all(t in ddl for t in types) and not any(t in ddl for t in absent)


def test_cli_lifecycle(fresh: Backend) -> None:
    sync, aio = fresh.sync_url, fresh.async_url

    def ok(done: subprocess.CompletedProcess[str], code: int = 0) -> str:
        assert done.returncode == code, (done.stdout, done.stderr)
        return done.stdout.strip()

    first = cli("upgrade", "--url", sync, "--revision", REVISIONS[0])
    assert ok(first) == f"sqlsaver tables: {REVISIONS[0]}"
    assert f"Running upgrade  -> {REVISIONS[0]}" in first.stderr
    assert ok(cli("check", "--url", aio), 1) == f"{REVISIONS[0]} (behind head {HEAD}: upgrade)"
    upgraded = cli("upgrade", "--url", aio)
    assert ok(upgraded) == f"sqlsaver tables: {HEAD}"
    progress = [line for line in upgraded.stderr.splitlines() if line.startswith("Running upgrade")]
    assert [line.split(",")[0] for line in progress] == [
        f"Running upgrade {a} -> {b}" for a, b in pairwise(REVISIONS)
    ]
    checked, current = at_once(
        lambda: cli("check", "--url", sync), lambda: cli("current", "--url", aio)
    )
    assert ok(checked) == ok(current) == f"{HEAD} (at head {HEAD})"
    with engine_on(sync) as engine:
        assert schema_diff(engine) == []
        down = cli("downgrade", "--url", aio, "--revision", "base")
        assert ok(down) == "sqlsaver tables: none (base)"
        assert set(schema(engine)) == {VERSION_TABLE}
    assert ok(cli("current", "--url", sync)) == "none (not set up)"


def test_cli_upgrade_refuses_a_database_ahead(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ahead.db'}"
    with engine_on(url) as engine:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
    done = cli("upgrade", "--url", url)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("error: ") and "newer sqlsaver" in done.stderr, done.stderr
