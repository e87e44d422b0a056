"""``python -m sqlsaver``, run as a user runs it (a subprocess), on real
SQLite, PostgreSQL and MySQL/MariaDB databases.

1. Offline ``--sql`` DDL per dialect (no database); upgrade / check /
   current / downgrade, sync and async URLs.
2. The commands that errors suggest work when pasted.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import Backend
from sqlalchemy import make_url, text
from test_migrations import (
    HEAD,
    REVISIONS,
    SQLSAVER_TABLES,
    VERSION_TABLE,
    at_once,
    cli,
    config,
    engine_on,
    fresh,
    run,
    schema,
    schema_diff,
)

from sqlsaver import AsyncSQLSaver, SchemaNotReadyError, SQLSaver, migrate

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


# -- 2: the commands errors suggest ----------------------------------------------------


def pasted(message: str, password: str | None) -> list[str]:
    """The upgrade command in an error message, as a user pastes it: with
    the password put in for ``<password>``."""
    found = re.search(r"`(python -m sqlsaver upgrade --url [^`]+)`", message)
    assert found, message
    command = found.group(1)
    if password is not None:
        command = command.replace("<password>", password)
    return [sys.executable, *shlex.split(command)[1:]]


@pytest.mark.parametrize("check_schema", [True, False])
async def test_not_ready_hint_is_a_command_that_works(fresh: Backend, check_schema: bool) -> None:
    url = make_url(fresh.async_url)
    async with AsyncSQLSaver.from_url(fresh.async_url, check_schema=check_schema) as saver:
        with pytest.raises(SchemaNotReadyError) as error:
            await saver.aget_tuple(config("t"))
    message = str(error.value)
    # The URL as given: its async driver (sqlite+aiosqlite, not sqlite).
    assert f"--url {url.drivername}://" in message or f"--url '{url.drivername}://" in message
    assert "***" not in message
    if url.password:
        assert url.password not in message and "<password>" in message
    done = run(*pasted(message, url.password))
    assert done.returncode == 0, done.stderr
    with SQLSaver.from_url(fresh.sync_url) as sync_saver:
        assert sync_saver.get_tuple(config("t")) is None


def test_hint_never_shows_a_password() -> None:
    url = make_url("postgresql+asyncpg://bob:s3cr%40t@db.example:5432/app?ssl=require")
    command = migrate.upgrade_command(url)
    assert command == (
        "`python -m sqlsaver upgrade --url "
        "'postgresql+asyncpg://bob:<password>@db.example:5432/app?ssl=require'`"
        " (with the password in place of <password>)"
    )
    assert migrate.upgrade_command(make_url("sqlite+aiosqlite:///a/b.db")) == (
        "`python -m sqlsaver upgrade --url sqlite+aiosqlite:///a/b.db`"
    )
