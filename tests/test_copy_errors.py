"""`copy_threads` and ``python -m sqlsaver copy`` refusing what they cannot
do, with a message a user can act on, and writing nothing of it:

1. a source with none of the tables it reads: the tables found are listed;
2. a target migrated by a newer sqlsaver (`SchemaTooNewError`);
3. a thread id longer than MySQL's key (1020 bytes), to MySQL: the thread
   and the limit named, nothing of that thread written; 1020 bytes copy;
4. a source written with an `EncryptedSerializer`, copied with the default
   serializer: told to pass ``serde=``; with the right one it copies and
   reads back;
5. ``--thread`` naming a thread the source does not have;
6. a SQLite source file that does not exist (and is not made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from copying import DATABASES, cfg, cli, graphs, opened, row_counts, scratch
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.types import Command
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.pool import NullPool

from sqlsaver import SchemaTooNewError, SQLSaver, migrate
from sqlsaver.models import Base
from sqlsaver.transfer import CopyError, UnknownSourceError, copy_threads

KEY = b"sixteen byte key"


def paused(saver: Any, *threads: str) -> None:
    """The interview left paused at its ``interrupt()`` on each thread."""
    for thread in threads:
        graphs(saver)["interview"].invoke({"log": ["hello"]}, cfg(thread))


def execute(url: str, *statements: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", DATABASES)
def test_unknown_source_lists_its_tables(database: str, tmp_path: Path) -> None:
    target = tmp_path / "target.db"
    with scratch(database, tmp_path) as source:
        # A table called checkpoints alone is no saver's.
        execute(source, "CREATE TABLE notes (id INTEGER)", "CREATE TABLE checkpoints (id INTEGER)")
        with pytest.raises(UnknownSourceError) as raised:
            copy_threads(source, f"sqlite:///{target}")
    message = str(raised.value)
    assert "Tables there: ['checkpoints', 'notes']" in message, message
    assert "sqlsaver_checkpoints" in message and "checkpoint_blobs" in message, message
    assert not target.exists()


@pytest.mark.parametrize("database", DATABASES)
def test_target_migrated_by_a_newer_sqlsaver(database: str, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    with opened("sqlsaver", source) as saver:
        paused(saver, "t")
    with scratch(database, tmp_path) as target:
        with SQLSaver.from_url(target) as saver:
            saver.setup()
        execute(target, f"UPDATE {migrate.VERSION_TABLE} SET version_num = '9999_from_later'")
        with pytest.raises(SchemaTooNewError) as raised:
            copy_threads(source, target)
        assert "9999_from_later" in str(raised.value), raised.value
        assert set(row_counts(target).values()) == {0}
        engine = create_engine(target, poolclass=NullPool)
        with engine.connect() as conn:
            version = conn.scalar(text(f"SELECT version_num FROM {migrate.VERSION_TABLE}"))
        engine.dispose()
        assert version == "9999_from_later"


def test_thread_id_longer_than_mysql_takes(tmp_path: Path) -> None:
    fits, too_long = "é" * 510, "é" * 510 + "x"  # 1020 and 1021 bytes
    source = f"sqlite:///{tmp_path / 'source.db'}"
    with opened("sqlsaver", source) as saver:
        paused(saver, fits, too_long)
    with scratch("mysql", tmp_path) as target:
        with pytest.raises(CopyError) as raised:
            copy_threads(source, target)
        message = str(raised.value)
        assert message.startswith(f"thread {too_long!r}: its thread_id"), message
        assert "1021 bytes" in message and "(1020)" in message, message
        assert "thread_ids=" in message, message
        engine = create_engine(target, poolclass=NullPool)
        with engine.connect() as conn:
            for table in Base.metadata.sorted_tables:
                where = table.c.thread_id == too_long
                assert conn.scalar(select(func.count()).select_from(table).where(where)) == 0
        engine.dispose()
        # The one at the limit was copied whole, and reads back.
        with opened("sqlsaver", source) as there, SQLSaver.from_url(target) as here:
            graph = graphs(here)["interview"]
            assert graph.get_state(cfg(fits)) == graphs(there)["interview"].get_state(cfg(fits))
            assert graph.get_state(cfg(fits)).next == ("child",)


ENCRYPTED_SOURCES = {
    "PostgresSaver": ("postgres", "postgres"),
    "PyMySQLSaver": ("mysql", "mysql"),
    "SqliteSaver": ("sqlite", "sqlite"),
    "sqlsaver": ("sqlsaver", "sqlite"),
}


@pytest.mark.parametrize("name", ENCRYPTED_SOURCES)
def test_encrypted_source_needs_its_serde(name: str, tmp_path: Path) -> None:
    kind, database = ENCRYPTED_SOURCES[name]
    serde = EncryptedSerializer.from_pycryptodome_aes(key=KEY)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    with scratch(database, tmp_path) as source:
        with opened(kind, source, serde) as saver:
            paused(saver, "secret")
        with pytest.raises(CopyError) as raised:
            copy_threads(source, target)
        message = str(raised.value)
        assert message.startswith("thread 'secret': "), message
        assert "pass serde= the serializer the source was written with" in message, message
        # Refused before any row is written: a run again with the right
        # serializer must not find the thread "whole" (and skip it).
        assert set(row_counts(target).values()) <= {0}, row_counts(target)

        report = copy_threads(source, target, serde=serde)
        assert report.verified == 1
        with opened(kind, source, serde) as there, SQLSaver.from_url(target, serde=serde) as here:
            expected = graphs(there)["interview"].get_state(cfg("secret"), subgraphs=True)
            assert graphs(here)["interview"].get_state(cfg("secret"), subgraphs=True) == expected
            resumed = graphs(here)["interview"].invoke(Command(resume="Ada"), cfg("secret"))
        assert resumed["log"][-1] == "bye Ada"


def test_another_thread_of_the_same_id_on_the_target(tmp_path: Path) -> None:
    """Two sources that each have a thread "1": the second copy into the
    same target is refused before it writes, not merged into the first."""
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "second.db"))
    for source in (first, second):
        with opened("sqlsaver", source) as saver:
            paused(saver, "1")
    target = f"sqlite:///{tmp_path / 'target.db'}"
    copy_threads(first, target)
    before = row_counts(target)
    with pytest.raises(CopyError) as raised:
        copy_threads(second, target)
    message = str(raised.value)
    assert "already holds a thread '1' with checkpoints the source does not have" in message
    assert row_counts(target) == before


def test_cli_thread_the_source_does_not_have(tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    with opened("sqlsaver", source) as saver:
        paused(saver, "there")
    target = tmp_path / "target.db"
    done = cli(
        "copy", "--from", source, "--to", f"sqlite:///{target}", "--thread", "there",
        "--thread", "not-there", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "no thread 'not-there' in the source" in done.stderr, done.stderr
    assert "'there'" not in done.stderr.replace("'not-there'", ""), done.stderr
    assert not target.exists()  # nothing written, not even the thread there


@pytest.mark.parametrize("how", ["function", "cli"])
def test_sqlite_source_that_does_not_exist(how: str, tmp_path: Path) -> None:
    missing, target = tmp_path / "missing.db", tmp_path / "target.db"
    if how == "cli":
        done = cli(
            "copy", "--from", f"sqlite:///{missing}", "--to", f"sqlite:///{target}", cwd=tmp_path
        )
        assert done.returncode == 2, done
        message = done.stderr
    else:
        with pytest.raises(CopyError) as raised:
            copy_threads(f"sqlite:///{missing}", f"sqlite:///{target}")
        message = str(raised.value)
    assert f"no SQLite database at {missing}" in message, message
    assert not missing.exists() and not target.exists()


def test_sqlitesaver_file_from_before_task_paths(tmp_path: Path) -> None:
    """A SqliteSaver file whose writes table has no task_path (SqliteSaver
    before 2.0.x added it) is copied, with empty task paths."""
    source = f"sqlite:///{tmp_path / 'old.db'}"
    with opened("sqlite", source) as saver:
        paused(saver, "old")
    execute(
        source,
        "CREATE TABLE old_writes AS SELECT thread_id, checkpoint_ns, checkpoint_id, task_id,"
        " idx, channel, type, value FROM writes",
        "DROP TABLE writes",
        "ALTER TABLE old_writes RENAME TO writes",
    )
    target = f"sqlite:///{tmp_path / 'target.db'}"
    report = copy_threads(source, target)
    assert (report.threads, report.verified) == (1, 1)
    engine = create_engine(target, poolclass=NullPool)
    with engine.connect() as conn:
        paths = set(conn.scalars(text("SELECT DISTINCT task_path FROM sqlsaver_writes")))
    engine.dispose()
    assert paths == {""} and report.writes > 0


def test_shallow_postgres_saver_tables_are_refused(tmp_path: Path) -> None:
    """The deprecated ShallowPostgresSaver's tables have the names of
    PostgresSaver's, but no versions in checkpoint_blobs: refused by name,
    not a database error halfway through."""
    with scratch("postgres", tmp_path) as source:
        execute(
            source,
            "CREATE TABLE checkpoints (thread_id TEXT, checkpoint_ns TEXT, checkpoint_id TEXT,"
            " parent_checkpoint_id TEXT, type TEXT, checkpoint JSONB, metadata JSONB)",
            "CREATE TABLE checkpoint_blobs (thread_id TEXT, checkpoint_ns TEXT, channel TEXT,"
            " type TEXT, blob BYTEA)",
            "CREATE TABLE checkpoint_writes (thread_id TEXT, checkpoint_ns TEXT,"
            " checkpoint_id TEXT, task_id TEXT, task_path TEXT, idx INTEGER, channel TEXT,"
            " type TEXT, blob BYTEA)",
        )
        with pytest.raises(UnknownSourceError, match="deprecated ShallowPostgresSaver"):
            copy_threads(source, f"sqlite:///{tmp_path / 'target.db'}")
    assert not (tmp_path / "target.db").exists()
