"""Migrations that do not finish, on real SQLite, PostgreSQL and MySQL/MariaDB.

MySQL and MariaDB commit every DDL statement whatever transaction it is in,
so a migration's DDL and its version row can part: a caller's rollback, or
a process killed between two statements, must not leave the tables at a
revision other than the one the version table names, or if it does (a
kill), the next `setup()` must complete the migration. Covered:

1. `setup()` / `migrate.upgrade` in a caller's transaction (Connection,
   Session, AsyncConnection, AsyncSession) that is rolled back, from every
   revision: PostgreSQL and SQLite undo it all; MySQL keeps it all, version
   row included. `setup()` afterwards reaches head.
2. A database already left half-migrated (the version table at 0003, 0004's
   column there, as sqlsaver before this fix left it) is completed by
   `setup()` (sync and async) and by `python -m sqlsaver upgrade`.
3. A failure before each statement that changes the schema, writes the
   version table or commits, in `setup()` from base (on an Engine of
   sqlsaver's, and on a caller's Connection): the version table never names
   a revision whose tables are not all there (PostgreSQL and SQLite: all
   is undone), and `setup()` run again ends at head, equal to the models.
   The same for `migrate.downgrade` to base, run again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import Backend
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from test_migrations import cli, engine_on, fresh, schema, schema_diff, version_rows

from sqlsaver import AsyncSQLSaver, SQLSaver, migrate
from sqlsaver.models import Base

__all__ = ["fresh"]  # the fixture, imported for pytest

REVISIONS, HEAD, VERSION_TABLE = migrate.REVISIONS, migrate.HEAD, migrate.VERSION_TABLE
STARTS: list[str | None] = [None, *REVISIONS[:-1]]


@contextmanager
def pooled(url: str) -> Iterator[Engine]:
    """An engine that keeps its connections: these tests look at the
    schema a few hundred times, and a MySQL login costs ~50 ms."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def drop_everything(engine: Engine) -> None:
    """sqlsaver's tables gone, whatever state a migration left them in."""
    with engine.begin() as conn:
        for table in [*reversed(Base.metadata.sorted_tables), VERSION_TABLE]:
            conn.execute(text(f"DROP TABLE IF EXISTS {getattr(table, 'name', table)}"))


def schemas_by_revision(engine: Engine) -> dict[str | None, dict[str, Any]]:
    """The schema at base and at each revision, migrated without a hitch."""
    drop_everything(engine)
    at: dict[str | None, dict[str, Any]] = {None: {}}
    for revision in REVISIONS:
        migrate.upgrade(engine, revision)
        at[revision] = schema(engine)
    drop_everything(engine)
    return at


def has_all_of(found: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether every table, column and index of ``expected`` is in ``found``."""
    return all(
        table in found
        and set(columns) <= set(found[table][0])
        and set(indexes) <= set(found[table][1])
        for table, (columns, indexes) in expected.items()
    )


# -- 1: the caller rolls back -----------------------------------------------------


async def setup_then_roll_back(how: str, backend: Backend) -> None:
    """``setup()`` (or ``migrate.upgrade``) in a transaction of the
    caller's, which the caller then rolls back."""
    if how.startswith("async"):
        engine = create_async_engine(backend.async_url, poolclass=NullPool)
        try:
            if how == "async connection":
                async with engine.connect() as aconn:
                    await AsyncSQLSaver(aconn).setup()
                    await aconn.rollback()
            else:
                async with AsyncSession(engine) as session:
                    await AsyncSQLSaver(session).setup()
                    await session.rollback()
        finally:
            await engine.dispose()
        return
    with engine_on(backend.sync_url) as sync_engine:
        if how == "connection":
            with sync_engine.connect() as conn:
                SQLSaver(conn).setup()
                conn.rollback()
        elif how == "upgrade":
            with sync_engine.connect() as conn:
                migrate.upgrade(conn)
            # the block ends without a commit: SQLAlchemy rolls back
        else:
            with Session(sync_engine) as session:
                SQLSaver(session).setup()
                session.rollback()


@pytest.mark.parametrize(
    "how", ["connection", "upgrade", "session", "async connection", "async session"]
)
async def test_setup_rolled_back_by_the_caller_is_never_half_done(fresh: Backend, how: str) -> None:
    with pooled(fresh.sync_url) as engine:
        at = schemas_by_revision(engine)
        for start in STARTS:
            drop_everything(engine)
            if start is not None:
                migrate.upgrade(engine, start)
            await setup_then_roll_back(how, fresh)
            if fresh.name == "mysql":
                # Its DDL cannot be rolled back: the version row stays with it.
                assert (start, migrate.current(engine)) == (start, HEAD)
                assert schema_diff(engine) == []
            else:  # transactional DDL: all of it undone
                assert (start, migrate.current(engine)) == (start, start)
                assert schema(engine) == at[start]
            SQLSaver(engine).setup()
            assert (start, version_rows(engine)) == (start, [(HEAD,)])
            assert schema_diff(engine) == []


# -- 2: a database left half-migrated is completed ------------------------------------


@pytest.mark.parametrize("how", ["setup", "async setup", "cli"])
async def test_half_migrated_database_is_completed(fresh: Backend, how: str) -> None:
    """The state a rolled-back `setup()` left on MySQL before this was
    fixed: 0004's column added, the version table still at 0003."""
    with pooled(fresh.sync_url) as engine:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = :r"), {"r": "0003"})
        assert migrate.status(engine) == "behind"
        if how == "setup":
            with SQLSaver.from_url(fresh.sync_url) as saver:
                saver.setup()
        elif how == "async setup":
            async with AsyncSQLSaver.from_url(fresh.async_url) as asaver:
                await asaver.setup()
        else:
            done = cli("upgrade", "--url", fresh.sync_url)
            assert (done.returncode, done.stdout.strip()) == (0, f"sqlsaver tables: {HEAD}"), (
                done.stderr
            )
        assert version_rows(engine) == [(HEAD,)] and schema_diff(engine) == []


# -- 3: a failure at every step ---------------------------------------------------------


class Interrupted(Exception):
    """Stands for a crash, or a lost connection, before a statement."""


# Statements after which a killed process leaves something behind: DDL,
# version rows, and the end of a transaction.
CHANGES = re.compile(r"\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE|COMMIT)\b", re.IGNORECASE)


@contextmanager
def failing_before(nth: int | None) -> Iterator[list[str]]:
    """Raise `Interrupted` in place of the ``nth`` statement (from 0) that
    changes something (`CHANGES`), on any engine; with None, only count them."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if CHANGES.match(statement):
            if len(seen) == nth:
                raise Interrupted(statement)
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", before)


def setup_from_base(how: str, backend: Backend) -> None:
    """`setup()` on an Engine of sqlsaver's (AUTOCOMMIT, a transaction of
    its own), or on a caller's Connection (then committed)."""
    if how == "saver's engine":
        with SQLSaver.from_url(backend.sync_url) as saver:
            saver.setup()
        return
    with engine_on(backend.sync_url) as engine, engine.connect() as conn:
        SQLSaver(conn).setup()
        conn.commit()


# Async setup() runs the same `migrate.setup` through `run_sync` (1 and 2
# cover its transactions).
@pytest.mark.parametrize("how", ["saver's engine", "caller's connection"])
def test_setup_failing_at_every_step_completes_when_run_again(fresh: Backend, how: str) -> None:
    with pooled(fresh.sync_url) as engine:
        at = schemas_by_revision(engine)
        with failing_before(None) as steps:
            setup_from_base(how, fresh)
        ddl = [s for s in steps if not re.match(r"\s*(INSERT|UPDATE|DELETE|COMMIT)", s)]
        assert len(ddl) >= 1 + len(Base.metadata.sorted_tables), steps  # and the version table
        for nth in range(len(steps)):
            drop_everything(engine)
            with pytest.raises(Interrupted), failing_before(nth):
                setup_from_base(how, fresh)
            # The version table names a revision whose tables are all there
            # (on MySQL, some of the next one's may be too), and says so.
            revision = migrate.current(engine)
            assert has_all_of(schema(engine), at[revision]), (nth, steps[nth], revision)
            if revision == HEAD:  # failed after the last revision: all there
                assert schema_diff(engine) == [], (nth, steps[nth])
            if fresh.name != "mysql":  # transactional DDL: nothing of it stays
                assert (revision, schema(engine)) == (None, {}), (nth, steps[nth])
            setup_from_base(how, fresh)
            assert version_rows(engine) == [(HEAD,)], (nth, steps[nth])
            assert schema_diff(engine) == [], (nth, steps[nth])


def test_downgrade_failing_at_every_step_completes_when_run_again(fresh: Backend) -> None:
    with pooled(fresh.sync_url) as engine:
        migrate.upgrade(engine)
        with failing_before(None) as steps:
            migrate.downgrade(engine, "base")
        assert len(steps) >= len(Base.metadata.sorted_tables), steps
        for nth in range(len(steps)):
            drop_everything(engine)
            migrate.upgrade(engine)
            with pytest.raises(Interrupted), failing_before(nth):
                migrate.downgrade(engine, "base")
            if fresh.name != "mysql":
                assert (migrate.current(engine), schema_diff(engine)) == (HEAD, [])
            migrate.downgrade(engine, "base")
            assert migrate.current(engine) is None, (nth, steps[nth])
            assert set(schema(engine)) == {VERSION_TABLE}, (nth, steps[nth])
