"""``python -m sqlsaver``, run as a user runs it (a subprocess), on real
SQLite, PostgreSQL and MySQL/MariaDB databases.

1. Offline ``--sql`` DDL per dialect (no database); upgrade / check /
   current / downgrade, sync and async URLs.
2. The commands that errors suggest work when pasted.
3. Ordinary failures (server down, unknown database or login, a SQLite
   folder that does not exist, an unknown revision, URLs SQLAlchemy will
   not take) are one line naming the problem and the fix, exit 2; with
   ``-v`` the traceback.
4. Commands that only read create no SQLite file.
5. ``sweep``: its limit, and each count said once.
6. Progress: plain lines (1), or a bar on a terminal.
7. ``--help``: plain text, every command described.
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import shlex
import socket
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
from conftest import Backend
from langgraph.checkpoint.base import empty_checkpoint
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
from sqlsaver.__main__ import parser

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


# -- 3: errors a user can act on -------------------------------------------------------


def failed(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command wrote: exit 2, nothing on stdout, no traceback."""
    assert (done.returncode, done.stdout) == (2, ""), (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ")
    return done.stderr.strip()


def unused_port() -> int:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port: int = listening.getsockname()[1]
    return port  # closed again: nothing listens there


@pytest.mark.parametrize(
    "scheme, name",
    [
        ("postgresql+psycopg", "PostgreSQL"),
        ("postgresql+asyncpg", "PostgreSQL"),
        ("mysql+pymysql", "MySQL"),
        ("mysql+asyncmy", "MySQL"),
    ],
)
def test_server_down(scheme: str, name: str) -> None:
    port = unused_port()
    message = failed(cli("current", "--url", f"{scheme}://app:s3cret@127.0.0.1:{port}/app"))
    assert message == (
        f"error: cannot connect to {name} at 127.0.0.1:{port}: connection refused. "
        "Is the server running? Check the host and port in --url."
    )


@pytest.mark.parametrize("aio", [False, True])
@pytest.mark.parametrize("backend", ["postgres", "mysql"], indirect=True)  # servers only
def test_unknown_database_and_login(backend: Backend, aio: bool) -> None:
    url = make_url(backend.async_url if aio else backend.sync_url)
    name = {"postgres": "PostgreSQL", "mysql": "MySQL"}[backend.name]
    where = f"{name} at {url.host}:{url.port or {'postgres': 5432, 'mysql': 3306}[backend.name]}"
    nodb = url.set(database="sqlsaver_no_such_database")
    message = failed(cli("current", "--url", nodb.render_as_string(hide_password=False)))
    assert message.startswith(f"error: no database 'sqlsaver_no_such_database' on {where}: ")
    assert "CREATE DATABASE sqlsaver_no_such_database" in message
    stranger = url.set(username="sqlsaver_no_such_user", password="s3cret-pw")
    message = failed(cli("check", "--url", stranger.render_as_string(hide_password=False)))
    assert message.startswith(f"error: {where} refused to log in user 'sqlsaver_no_such_user': ")
    assert message.endswith("Check the user and password in --url.")
    assert "s3cret-pw" not in message


@pytest.mark.parametrize(
    "url, expected",
    [
        ("mysql://app@127.0.0.1/app", "mysql+pymysql://"),
        ("postgres://app:s3cret@127.0.0.1/app", "postgresql+psycopg://"),
    ],
)
def test_url_hints(url: str, expected: str) -> None:
    message = failed(cli("upgrade", "--url", url))
    assert expected in message and "s3cret" not in message


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`python -m sqlsaver ... | head`, with the reader gone: exit 1 and
    nothing on stderr, not an error that blames the SQLite file (as the
    closed pipe's OSError once did) nor Python's notice at exit."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sqlsaver", "demo", "--url", f"sqlite:///{tmp_path / 'd.db'}"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")


def test_missing_sqlite_folder(tmp_path: Path) -> None:
    folder = tmp_path / "x" / "y"
    for command in ("upgrade", "demo"):
        message = failed(cli(command, "--url", f"sqlite:///{folder / 'z.db'}"))
        assert message == (
            f"error: no folder {folder} for the SQLite file {folder / 'z.db'}: "
            f"create it first (mkdir -p {folder}), or fix the path in --url"
        )
    assert not (tmp_path / "x").exists()


def test_unknown_revision(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for args in (["upgrade", "--revision", "zzz"], ["downgrade", "--revision", "zzz"]):
        assert failed(cli(*args, "--url", url)) == (
            "error: unknown revision 'zzz'; `python -m sqlsaver history` lists them"
        )


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    for args in (["-v", "upgrade"], ["upgrade", "--verbose"]):
        done = cli(*args, "--url", url, "--revision", "zzz")
        assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr
        assert "Can't locate revision identified by 'zzz'" in done.stderr


# -- 4: commands that only read create no SQLite file ------------------------------------


def test_read_only_commands_create_no_sqlite_file(tmp_path: Path) -> None:
    def in_tmp(*args: str) -> subprocess.CompletedProcess[str]:
        return run(sys.executable, "-m", "sqlsaver", *args, cwd=tmp_path)

    typo = tmp_path / "typo.db"
    for args in (["current"], ["sweep"], ["downgrade", "--revision", "base"]):
        assert failed(in_tmp(*args, "--url", "sqlite:///typo.db")) == (
            f"error: no SQLite database at {typo}: check the path in --url "
            "(`python -m sqlsaver upgrade` creates one)"
        )
    checked = in_tmp("check", "--url", "sqlite+aiosqlite:///typo.db")
    assert (checked.returncode, checked.stderr) == (1, ""), checked.stderr
    assert checked.stdout == f"none (not set up: no SQLite database at {typo})\n"
    assert list(tmp_path.iterdir()) == []


# -- 5: sweep ------------------------------------------------------------------------------


def test_sweep_limit_must_be_positive(tmp_path: Path) -> None:
    for limit in ("0", "-1", "x"):
        done = cli("sweep", "--url", f"sqlite:///{tmp_path / 's.db'}", "--limit", limit)
        assert done.returncode == 2 and done.stdout == ""
        assert f"argument --limit: '{limit}' is not a whole number of at least 1" in done.stderr


def test_sweep_reports_each_count_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    # Threads written in 1970 with a one-minute TTL: long expired now.
    with SQLSaver.from_url(url, ttl={"default_ttl": 1}, clock=lambda: 0.0) as saver:
        saver.setup()
        for i in range(130):
            saver.put(config(f"t{i}"), empty_checkpoint(), {}, {})
    done = cli("sweep", "--url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "swept 130 expired threads (delete)\n"
    # The total after each transaction of 100 but the last (said on stdout).
    assert done.stderr == "swept 100 expired threads so far\n"
    again = cli("sweep", "--url", url, "--limit", "5")
    assert (again.stdout, again.stderr) == ("swept 0 expired threads (delete)\n", "")


# -- 6: progress ------------------------------------------------------------------------


def test_upgrade_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "sqlsaver",
                "upgrade",
                "--url",
                f"sqlite:///{tmp_path / 'p.db'}",
            ],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=120,
        )
        os.close(terminal)
        drawn = b""
        while chunk := _read(controller):
            drawn += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0 and done.stdout == f"sqlsaver tables: {HEAD}\n"
    screen = drawn.decode()
    total = len(REVISIONS)
    for step in range(1, total + 1):
        assert (
            f"\r[{'#' * (20 * step // total)}" in screen and f"] {step}/{total} revisions" in screen
        )
    assert "Running upgrade" not in screen and screen.endswith("\n")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the other end is closed and drained
        return b""


# -- 7: help ---------------------------------------------------------------------------


def test_help_is_plain_text_with_examples() -> None:
    top = parser()
    assert (
        "examples:" in top.format_help() and "python -m sqlsaver upgrade --url" in top.format_help()
    )
    (commands,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == {
        "demo",
        "upgrade",
        "downgrade",
        "current",
        "check",
        "sweep",
        "copy",
        "history",
    }
    for name, command in commands.choices.items():
        assert command.description, name
        text = command.format_help()
        assert not re.search(r"``|`[a-z_.]+`", text), (name, text)
        assert "--verbose" in text, name
    assert "``" not in top.format_help()
    done = cli("--help")
    assert done.returncode == 0 and "examples:" in done.stdout and "``" not in done.stdout
