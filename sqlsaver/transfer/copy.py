"""`copy_threads`: move threads from one database to another, from sqlsaver
or from an official saver's tables (`sources`), into sqlsaver.

How a copy stays safe to run again (after a crash or Ctrl-C):
- every row is inserted so that a row already there with the same key is
  kept (`dialects.insert_ignore`), and rows keep their ids, so nothing is
  ever stored twice;
- each page of rows is one transaction on the target, and a thread's
  checkpoints come last, after its values, writes and TTL row: a thread whose
  checkpoints and writes the target holds in full was copied whole, and is
  passed over; any other is copied again, page by page.
Then each copied thread is checked: its counts on both sides, and each
namespace's latest checkpoint (values and pending writes) read back from
the target equal to the source's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import URL, Connection, Engine, create_engine, func, select
from sqlalchemy.exc import DBAPIError

from sqlsaver import dialects, engines, migrate, schemas
from sqlsaver.execution.runner import sync_runner
from sqlsaver.migrate import SchemaError
from sqlsaver.models import MYSQL_KEY_BYTES, checkpoints, writes
from sqlsaver.ops.write import insert_copied
from sqlsaver.saver import SQLSaver
from sqlsaver.transfer.sources import (
    NAMES,
    DecodeError,
    Kind,
    Latest,
    Page,
    Source,
    count_rows,
    detect,
    official_writes,
)

Database = str | URL | Engine


class CopyError(ValueError):
    """A copy that cannot be made, or that did not verify: says which
    thread, and what to do."""


@dataclass
class CopyReport:
    """What `copy_threads` did (or, with ``dry_run``, would do)."""

    source_kind: Kind
    dry_run: bool = False
    threads: int = 0  # threads copied (in a dry run: to copy)
    skipped: int = 0  # found whole on the target already
    checkpoints: int = 0  # checkpoints of the threads above
    writes: int = 0  # pending writes of the threads above
    rows: int = 0  # rows sent to the target, every table
    verified: int = 0  # threads checked on the target
    seconds: float = 0.0
    total: int = 0  # checkpoints in the source's threads to copy
    done: int = 0  # of those, copied (or found on the target) so far

    def __str__(self) -> str:
        done = "would copy" if self.dry_run else "copied"
        text = (
            f"{done} {_count(self.threads, 'thread')} from {NAMES[self.source_kind]}: "
            f"{_count(self.checkpoints, 'checkpoint')}, {_count(self.writes, 'pending write')}"
        )
        if self.skipped:
            text += f"; {self.skipped} already on the target, left as they were"
        if not self.dry_run:
            text += (
                f"; {_count(self.rows, 'row')} in {self.seconds:.1f} s; "
                f"{_count(self.verified, 'thread')} verified"
            )
        return text


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}" if n == 1 else f"{n} {thing}s"


def copy_threads(
    source: Database,
    target: Database,
    *,
    thread_ids: Sequence[str] | None = None,
    serde: SerializerProtocol | None = None,
    source_kind: Kind | None = None,
    dry_run: bool = False,
    page_size: int = 500,
    progress: Callable[[CopyReport], None] | None = None,
    source_schema: str | None = None,
    target_schema: str | None = None,
) -> CopyReport:
    """Copy threads (every one, or ``thread_ids``) from ``source`` into the
    sqlsaver database ``target``: every namespace, checkpoint (same ids,
    parents, metadata), channel value and pending write, and sqlsaver's TTL
    rows where the source is sqlsaver too.

    ``source`` is a sqlsaver database of any dialect, or the tables of
    PostgresSaver, SqliteSaver or the MySQL saver, told apart by its
    tables (``source_kind`` picks one where a database holds two kinds).
    ``target`` is set up (migrated to head) on the way. Both are URLs (a
    sync or an async driver) or Engines. ``serde`` is the serializer the
    source was written with (default: LangGraph's); values are copied as
    its bytes wherever the source keeps them apart, so open the target's
    savers with the same one. ``source_schema`` and ``target_schema``: the
    PostgreSQL schema or MySQL database each side's tables are in (the
    savers' ``schema=``; the target's must exist).

    Runs again safely after a crash or Ctrl-C: it goes on where it
    stopped, and never stores a row twice (see the module's doc). Raises
    `CopyError` for a thread it cannot copy or whose copy does not verify.

    Example:
        ```python
        from sqlsaver import SQLSaver
        from sqlsaver import copy_threads

        with SQLSaver.from_url("sqlite:///old.db") as old:
            old.setup()
        report = copy_threads("sqlite:///old.db", "sqlite:///new.db")
        print(report)  # copied 0 threads from sqlsaver: ...
        ```
    """
    if isinstance(thread_ids, str):
        raise TypeError("thread_ids is a list of thread ids, not one id: [thread_id]")
    if page_size < 1:
        raise ValueError(f"page_size is a number of rows, 1 or more, not {page_size}")
    serde = serde or JsonPlusSerializer()
    schemas.check_name(source_schema)
    schemas.check_name(target_schema)
    started = time.monotonic()
    with ExitStack() as stack:
        source_engine = stack.enter_context(_engine(source, create=False))
        assert source_engine is not None
        source_engine = _in_schema(source_engine, source_schema)
        # Only reads, each its own: no transaction stays open on the source.
        reading = source_engine.execution_options(isolation_level="AUTOCOMMIT")
        sconn = stack.enter_context(reading.connect())
        kind = source_kind or detect(sconn)
        if kind == "sqlsaver":  # its rows are copied as they are: this sqlsaver's
            migrate.require_current(sconn)
        writes_table = None if kind == "sqlsaver" else official_writes(sconn, kind)
        reader = Source(kind, serde, page_size, writes_table)
        report = CopyReport(kind, dry_run)
        for thread_id in thread_ids or ():  # before anything is written
            if reader.counts(sconn, thread_id) == (0, 0):
                raise CopyError(f"no thread {thread_id!r} in the source")
        report.total = reader.total(sconn, thread_ids)
        # A dry run makes no target: a SQLite file not there holds nothing.
        target_engine = stack.enter_context(
            _engine(target, create=True, touch=not dry_run, writes=not dry_run)
        )
        if target_engine is not None:
            target_engine = _in_schema(target_engine, target_schema)
        copier = None
        if not dry_run:
            assert target_engine is not None
            copier = _Copier(reader, sconn, source_engine, target_engine, serde, report, progress)
        for thread_id in _threads(reader, sconn, thread_ids):
            wanted = reader.counts(sconn, thread_id)
            have = _target_counts(target_engine, thread_id)
            if copier is not None and have != (0, 0):
                copier.refuse_another_thread(thread_id)
            if have == wanted:
                report.skipped += 1
                report.done += wanted[0]
            else:
                report.threads += 1
                report.checkpoints += wanted[0]
                report.writes += wanted[1]
                if copier is not None:
                    copier.copy(thread_id)
            if copier is not None:
                copier.verify(thread_id, wanted)
            if progress is not None:
                progress(report)
    report.seconds = time.monotonic() - started
    return report


class _Copier:
    """Copies a thread's pages into the target and checks what it holds."""

    def __init__(
        self,
        reader: Source,
        sconn: Connection,
        source: Engine,
        target: Engine,
        serde: SerializerProtocol,
        report: CopyReport,
        progress: Callable[[CopyReport], None] | None,
    ) -> None:
        self.reader, self.sconn, self.target = reader, sconn, target
        self.report, self.progress = report, progress
        self.saver = SQLSaver(target, serde=serde)
        self.saver.setup()
        self.runner = sync_runner(target)  # how writes run: atomic, retried
        # A sqlsaver source is read back by a saver of its own.
        self.source_saver = SQLSaver(source, serde=serde) if reader.kind == "sqlsaver" else None

    def copy(self, thread_id: str) -> None:
        try:
            self.reader.probe(self.sconn, thread_id)  # the serializer, before any write
            for page in self.reader.pages(self.sconn, thread_id):
                _refuse_long_keys(self.target, thread_id, page)
                self.runner.write(insert_copied, page)  # one transaction a page
                self.report.rows += sum(len(rows) for _, rows in page)
                self.report.done += sum(len(rows) for table, rows in page if table is checkpoints)
                if self.progress is not None:
                    self.progress(self.report)
        except DecodeError as error:  # SqliteSaver's checkpoints are decoded
            raise CopyError(_unreadable(thread_id, str(error))) from error

    def refuse_another_thread(self, thread_id: str) -> None:
        """A thread of the same id on the target with a latest checkpoint the
        source does not hold is another thread: refused before anything of
        this one is written or passed over as whole (a copy only ever
        completes its own)."""
        with self.target.connect() as conn:
            latest = conn.execute(
                select(checkpoints.c.checkpoint_ns, func.max(checkpoints.c.checkpoint_id))
                .where(checkpoints.c.thread_id == thread_id)
                .group_by(checkpoints.c.checkpoint_ns)
            ).all()
        for ns, checkpoint_id in latest:
            if not self.reader.holds(self.sconn, thread_id, ns, checkpoint_id):
                raise CopyError(
                    f"the target already holds a thread {thread_id!r} with checkpoints the "
                    f"source does not have (namespace {ns!r}, checkpoint {checkpoint_id}): "
                    "another thread of the same id. Copy into another database, or delete "
                    "that thread there first"
                )

    def verify(self, thread_id: str, wanted: tuple[int, int]) -> None:
        """The thread's counts on the target, and each namespace's latest
        checkpoint read back there, equal to the source's."""
        have = _target_counts(self.target, thread_id)
        if have != wanted:
            raise CopyError(
                f"thread {thread_id!r}: the target holds {have[0]} checkpoints and {have[1]} "
                f"pending writes, the source {wanted[0]} and {wanted[1]}"
            )
        for ns in self.reader.namespaces(self.sconn, thread_id):
            try:
                there = _latest(self.saver, thread_id, ns)
                here = (
                    _latest(self.source_saver, thread_id, ns)
                    if self.source_saver is not None
                    else self.reader.latest(self.sconn, thread_id, ns)
                )
            except (DBAPIError, SchemaError):
                raise  # the database's own error, or a schema to migrate: as it is
            except Exception as error:
                raise CopyError(
                    _unreadable(thread_id, f"{type(error).__name__}: {error}")
                ) from error
            if not here.same(there):
                raise CopyError(
                    f"thread {thread_id!r}, namespace {ns!r}: the latest checkpoint read back "
                    "from the target differs from the source's (a thread of that id that the "
                    "target held before?)"
                )
        self.report.verified += 1


def _unreadable(thread_id: str, error: str) -> str:
    return (
        f"thread {thread_id!r}: cannot read its checkpoints back with the serializer given "
        f"({error}): pass serde= the serializer the source was written with (an "
        "EncryptedSerializer with its key, ...) to copy_threads; the command line copies "
        "with LangGraph's default serializer"
    )


def _threads(reader: Source, conn: Connection, wanted: Sequence[str] | None) -> Iterator[str]:
    if wanted is not None:
        yield from dict.fromkeys(wanted)
        return
    after = None
    while page := reader.thread_ids(conn, after):
        yield from page
        after = page[-1]


@contextmanager
def _engine(
    database: Database, create: bool, touch: bool = True, writes: bool | None = None
) -> Iterator[Engine | None]:
    """An Engine on ``database`` (a sync one for an async URL), disposed of
    afterwards unless it was given: one that ``writes`` (by default, one
    that may ``create``) gets the engine a saver of sqlsaver's would; one
    that only reads a plain one, which changes nothing (not a SQLite file's
    journal mode). A SQLite file that does not exist is refused unless
    ``create``; unless ``touch`` it is not made either, and there is no
    engine (None)."""
    if isinstance(database, Engine):
        yield database
        return
    url = engines.parse_url(database)
    if url.get_dialect().is_async:
        url = engines.sync_twin(url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database).resolve()
        if not create and not path.exists():
            raise CopyError(f"no SQLite database at {path}")
        if not touch and not path.exists():
            yield None
            return
    if create if writes is None else writes:
        engine = engines.sync_engine(url, None)
    else:
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        yield engine
    finally:
        engine.dispose()


def _in_schema(engine: Engine, schema: str | None) -> Engine:
    """``engine`` with its tables in ``schema`` (`sqlsaver.schemas`): every
    reader, saver and insert of a copy takes it from the connection."""
    schemas.check_backend(schema, engine.dialect.name)
    return schemas.engine_in(engine, schema)


def _target_counts(engine: Engine | None, thread_id: str) -> tuple[int, int]:
    if engine is None:
        return 0, 0
    with engine.connect() as conn:
        if not conn.dialect.has_table(conn, checkpoints.name, schemas.of(conn)):
            return 0, 0
        return count_rows(conn, checkpoints, writes, thread_id)


def _refuse_long_keys(engine: Engine, thread_id: str, page: Page) -> None:
    """On MySQL, a key longer than its column takes (`MYSQL_KEY_BYTES`):
    refused with its name before any row of the page is sent."""
    if engine.dialect.name not in dialects.MYSQL:
        return
    for _, rows in page:
        for row in rows:
            for name, limit in MYSQL_KEY_BYTES.items():
                value = row.get(name)
                if isinstance(value, str) and len(value.encode()) > limit:
                    raise CopyError(
                        f"thread {thread_id!r}: its {name} {value[:60]!r}... is "
                        f"{len(value.encode())} bytes, more than MySQL's sqlsaver tables take "
                        f"({limit}): copy it to PostgreSQL or SQLite, or leave it out "
                        "(thread_ids=...)"
                    )


def _latest(saver: SQLSaver, thread_id: str, ns: str) -> Latest:
    found = saver.get_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ns}})
    if found is None:
        return Latest("", {}, [])
    pending = [(t, ch, v) for t, ch, v in found.pending_writes or []]
    return Latest(found.checkpoint["id"], dict(found.checkpoint["channel_values"]), pending)
