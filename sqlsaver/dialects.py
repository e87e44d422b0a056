"""Everything that differs between SQLite, PostgreSQL and MySQL/MariaDB.

This is the only module that branches on the dialect. The rest of sqlsaver
builds dialect-blind SQLAlchemy Core statements and asks this module for the
few constructs that have no portable spelling: column types, upsert /
insert-ignore, the metadata filter predicate, per-dialect engine settings,
and the recognition of "our tables are missing" errors.
"""

from __future__ import annotations

import json
import json.scanner
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Dialect,
    Insert,
    LargeBinary,
    Select,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    event,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool, StaticPool
from sqlalchemy.sql.selectable import TableValuedAlias

from sqlsaver.prepared import Prepared, observed

MYSQL = ("mysql", "mariadb")
# MySQL's client capability flags (the protocol's, as PyMySQL's CLIENT has them).
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_MULTI_STATEMENTS = 1 << 16


# --------------------------------------------------------------------------
# Column types
# --------------------------------------------------------------------------


class _Utf8VarBinary(TypeDecorator[str]):
    """A key string stored as UTF-8 bytes in a MySQL ``VARBINARY`` column.

    MySQL's default collations are case-insensitive (``"A" == "a"``) and its
    ``*_bin`` collations pad trailing spaces on MariaDB (``"a" == "a "``), so
    neither can hold thread ids faithfully. Binary strings compare byte by
    byte. Lengths are in bytes, and a UTF-8 key costs only the bytes it uses
    (not utf8mb4's flat four per character), which is what lets four key
    columns fit InnoDB's 3072-byte index limit.
    """

    impl = mysql.VARBINARY
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else value.encode("utf-8")

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).decode("utf-8")


def key_string(mysql_bytes: int) -> Any:
    """A key column: unbounded text on PostgreSQL and SQLite, a byte-exact
    ``VARBINARY(mysql_bytes)`` on MySQL/MariaDB (see `_Utf8VarBinary`)."""
    return Text().with_variant(_Utf8VarBinary(mysql_bytes), *MYSQL)


# PostgreSQL BYTEA, SQLite BLOB; MySQL's plain BLOB stops at 64 KiB.
BINARY = LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL)
# Unbounded text that is never part of a key (task paths).
LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), *MYSQL)
# A JSON object: JSONB on PostgreSQL, so that the metadata filter is a
# containment test and `json_entries` can expand channel versions.
# None is SQL NULL, not JSON's null.
JSON_OBJECT = JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def json_safe(text: str) -> bool:
    """Whether a string can live in every database's JSON as itself:
    PostgreSQL's JSONB cannot hold NUL, and lone surrogates are not UTF-8."""
    if "\x00" in text:
        return False
    if text.isascii():  # the common case, without encoding it
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expands_json(dialect: Dialect) -> bool:
    """Whether a read finds channel values through `json_entries`, in the
    statement that finds their checkpoints: PostgreSQL. Not MySQL and
    MariaDB: ``JSON_TABLE`` cannot list an object's keys, and its strings
    compare under a collation where our binary key columns compare bytes.
    Not SQLite, where ``json_each`` would, at ten times the cost of looking
    the values up by their keys. Elsewhere a read takes the checkpoints,
    then their writes and values (`ops._writes_and_values`)."""
    return dialect.name == "postgresql"


def json_entries(dialect: Dialect, column: ColumnElement[Any]) -> TableValuedAlias:
    """The (key, value) rows of a JSON object of strings in ``column``, as
    a table that a FROM clause joins beside the row holding it:
    PostgreSQL's ``jsonb_each_text`` (see `expands_json`)."""
    assert expands_json(dialect), dialect.name
    return func.jsonb_each_text(column).table_valued("key", "value")


# --------------------------------------------------------------------------
# Upsert and insert-ignore
# --------------------------------------------------------------------------


def _insert(dialect: Dialect, table: Table) -> Any:
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    if dialect.name in MYSQL:
        return mysql.insert(table)
    raise NotImplementedError(
        f"sqlsaver supports SQLite, PostgreSQL and MySQL/MariaDB, not {dialect.name!r}"
    )


def _key_columns(table: Table) -> list[Column[Any]]:
    return list(table.primary_key.columns)


@cache
def upsert(dialect: Dialect, table: Table, update: tuple[str, ...]) -> Insert:
    """INSERT that replaces the named columns of a row whose key exists.

    Cached per dialect: the statement is built once, and SQLAlchemy's
    compiled cache then makes each execution a lookup.
    """
    stmt = _insert(dialect, table)
    if dialect.name in MYSQL:
        return cast(Insert, stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in update}))
    return cast(
        Insert,
        stmt.on_conflict_do_update(
            index_elements=_key_columns(table),
            set_={c: stmt.excluded[c] for c in update},
        ),
    )


@cache
def insert_ignore(dialect: Dialect, table: Table) -> Insert:
    """INSERT that keeps the existing row when the key exists.

    On MySQL this is a no-op ``ON DUPLICATE KEY UPDATE`` rather than
    ``INSERT IGNORE``: IGNORE would also turn data errors (a too-long key)
    into warnings and silently store truncated keys.
    """
    stmt = _insert(dialect, table)
    if dialect.name in MYSQL:
        first_key = _key_columns(table)[0]
        return cast(Insert, stmt.on_duplicate_key_update({first_key.name: first_key}))
    return cast(Insert, stmt.on_conflict_do_nothing(index_elements=_key_columns(table)))


def chains_inserts(dialect: Dialect) -> bool:
    """Whether `chain` can make one statement of several inserts."""
    return dialect.name == "postgresql"


def max_binds(dialect: Dialect) -> int:
    """Bind parameters one statement may have: asyncpg's protocol counts
    them in 16 bits (signed), SQLite builds before 3.32 took 999. PyMySQL
    and asyncmy write the values into the statement (`CHAIN_BYTES` bounds
    that)."""
    if dialect.name == "sqlite":
        version = getattr(dialect.dbapi, "sqlite_version_info", (3, 32))
        return 32766 if version >= (3, 32) else 999
    return 32767


def chain(dialect: Dialect, inserts: list[Insert]) -> Insert:
    """Several inserts as one statement: PostgreSQL runs data-modifying
    ``WITH`` clauses exactly once, whether or not the main statement reads
    them, so ``WITH a AS (INSERT ...) INSERT ...`` stores both."""
    assert chains_inserts(dialect), dialect.name
    *before, last = inserts
    return last.add_cte(*(stmt.cte(f"insert_{n}") for n, stmt in enumerate(before)))


def upsert_expressions(
    dialect: Dialect,
    table: Table,
    values: dict[str, Any],
    update: Callable[[Any], dict[str, Any]],
) -> Insert:
    """INSERT ``values``; on a key conflict, SET ``update(inserted)``, where
    ``inserted`` names the proposed row and the table's columns the stored one."""
    stmt = _insert(dialect, table).values(values)
    if dialect.name in MYSQL:
        return cast(Insert, stmt.on_duplicate_key_update(update(stmt.inserted)))
    return cast(
        Insert,
        stmt.on_conflict_do_update(index_elements=_key_columns(table), set_=update(stmt.excluded)),
    )


def lock_skipping_locked(dialect: Dialect, stmt: Select[Any]) -> Select[Any]:
    """``FOR UPDATE SKIP LOCKED`` where the database has it (PostgreSQL,
    MySQL 8, MariaDB 10.6); SQLite's single writer needs no row locks."""
    if dialect.name == "sqlite":
        return stmt
    return stmt.with_for_update(skip_locked=True)


def epoch_now(dialect: Dialect) -> ColumnElement[float]:
    """The database's clock, in seconds since the epoch (UTC, fractional)."""
    if dialect.name == "postgresql":
        return cast(ColumnElement[float], func.extract("epoch", func.now()))
    if dialect.name in MYSQL:
        return cast(ColumnElement[float], func.unix_timestamp(func.now(6)))
    return cast(ColumnElement[float], (func.julianday("now") - 2440587.5) * 86400.0)


# --------------------------------------------------------------------------
# Metadata filter
# --------------------------------------------------------------------------
#
# Metadata is stored twice: exactly, as serde bytes, and as a JSON object for
# filtering whose keys and values are *canonical JSON text* (ASCII, sorted
# keys). Equality of canonical text is `InMemorySaver`'s `==` on the decoded
# values, and ASCII escapes keep NUL characters and lone surrogates (which
# PostgreSQL's JSONB and UTF-8 cannot hold) out of the database's JSON.


def _python_equal_form(value: Any) -> Any:
    """Fold values Python's ``==`` treats as equal into one form: ``True ==
    1 == 1.0``, ``[1.0] == [1]``, tuples equal to lists after a round trip."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {str(k): _python_equal_form(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_python_equal_form(v) for v in value]
    return value


def _verbatim(text: str) -> bool:
    """Whether JSON (with ``ensure_ascii``) writes this string as it is:
    printable ASCII without quotes or backslashes, as metadata keys and
    most values are. `json.dumps` is a few microseconds a call, and a
    `put` spells every metadata key and value."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


_EMPTY: dict[type, str] = {dict: "{}", list: "[]", tuple: "[]"}


def canonical_json(value: Any) -> str:
    """Canonical JSON text of a metadata value: values equal under Python's
    ``==`` (as `InMemorySaver` compares them) get equal text."""
    kind = type(value)
    if kind is str and _verbatim(value):
        return f'"{value}"'
    if kind is int or kind is bool:
        return str(int(value))
    if value is None:
        return "null"
    if kind in _EMPTY and not value:  # LangGraph's "parents": {} in every put
        return _EMPTY[kind]
    return json.dumps(
        _python_equal_form(value),
        ensure_ascii=True,
        sort_keys=True,
        separators=(",", ":"),
        default=repr,
    )


def canonical_key(key: str) -> str:
    """An injective ASCII spelling of a metadata key (JSON string escapes)."""
    return key if _verbatim(key) else json.dumps(key, ensure_ascii=True)[1:-1]


def filter_document(metadata: dict[str, Any]) -> dict[str, str]:
    """The filterable JSON document stored beside the exact metadata."""
    return {canonical_key(str(k)): canonical_json(v) for k, v in metadata.items()}


def metadata_matches(
    dialect: Dialect, column: ColumnElement[Any], slot: str, none: bool
) -> ColumnElement[bool]:
    """``metadata.get(key) == value``, with key and value bound as the
    parameters `metadata_params` names after ``slot``: the predicate is
    built (and compiled) once per filter shape, never per key or value.

    ``none``: the value is ``None``, which (as in `InMemorySaver`) also
    matches a missing key.
    """
    key, document = bindparam(f"{slot}_key", type_=Text), bindparam(f"{slot}_doc", type_=Text)
    if dialect.name == "postgresql":
        jsonb = type_coerce(column, postgresql.JSONB)
        equal = jsonb.contains(bindparam(f"{slot}_doc", type_=postgresql.JSONB))
        has_key = jsonb.has_key(key)
    elif dialect.name in MYSQL:
        equal = func.json_contains(column, document) == 1
        has_key = func.json_contains(func.json_keys(column), bindparam(f"{slot}_qkey")) == 1
    elif dialect.name == "sqlite":
        entries = func.json_each(column).table_valued("key", "value")
        entry = select(literal(1)).select_from(entries).where(entries.c.key == key)
        value = bindparam(f"{slot}_value", type_=Text)
        equal, has_key = exists(entry.where(entries.c.value == value)), exists(entry)
    else:
        raise NotImplementedError(dialect.name)
    return or_(equal, not_(has_key)) if none else equal


def metadata_params(dialect: Dialect, slot: str, key: str, value: Any) -> dict[str, Any]:
    """The parameters of a `metadata_matches` predicate for ``key == value``."""
    if not isinstance(key, str):
        raise TypeError(f"metadata filter keys must be strings, got {key!r}")
    ckey, cvalue = canonical_key(key), canonical_json(value)
    if dialect.name == "postgresql":
        return {f"{slot}_key": ckey, f"{slot}_doc": {ckey: cvalue}}
    if dialect.name in MYSQL:
        return {f"{slot}_doc": json.dumps({ckey: cvalue}), f"{slot}_qkey": json.dumps(ckey)}
    return {f"{slot}_key": ckey, f"{slot}_value": cvalue}


# --------------------------------------------------------------------------
# Engines sqlsaver creates itself (from_url)
# --------------------------------------------------------------------------


# Connections a saver's own engine keeps (`engine_options`).
POOL_SIZE = 10


def engine_options(url: URL) -> dict[str, Any]:
    """`create_engine` keyword arguments that suit a checkpointer."""
    # No pool_pre_ping (a round trip per operation): a dead connection fails
    # its transaction, the pool drops it, and the saver runs it again.
    options: dict[str, Any] = {}
    # The most recently used connection first: its statements are already
    # prepared (psycopg prepares a statement on its fifth run on a
    # connection; asyncpg's cache is per connection), and the connections
    # a quiet app does not need sit idle until the server closes them.
    options["pool_use_lifo"] = True
    # A fixed pool. SQLAlchemy's default lets 10 connections beyond the 5 it
    # keeps open for a burst, and closes them when given back: concurrent
    # graphs would log in (and have statements prepared) anew all the time.
    # Waiting a moment for one of the pool's is cheaper.
    options["pool_size"] = POOL_SIZE
    options["max_overflow"] = 0
    options["json_deserializer"] = json_loads
    if url.get_backend_name() == "sqlite":
        # Other writers wait for the lock instead of failing at once.
        options["connect_args"] = {"timeout": 30}
        # The driver begins no transaction of its own (pysqlite would, before
        # any INSERT, as DEFERRED): reads and one-statement writes need none,
        # and the other writes begin theirs as BEGIN IMMEDIATE (`atomic`).
        options["isolation_level"] = "AUTOCOMMIT"
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            # One in-memory database shared by every thread of this engine.
            options["poolclass"] = StaticPool
            for pool_option in ("pool_use_lifo", "pool_size", "max_overflow"):
                del options[pool_option]
            options["connect_args"]["check_same_thread"] = False
            # Nothing to reset on return (AUTOCOMMIT; every operation ends
            # the transactions it begins), and a ROLLBACK there would end
            # another thread's write on the one shared connection.
            options["pool_reset_on_return"] = None
    if url.get_backend_name() in MYSQL:
        options["pool_recycle"] = 3600  # below MySQL's wait_timeout
        if url.get_driver_name() == "pymysql":
            # A write of two inserts in one round trip (`runs_scripts`);
            # FOUND_ROWS is SQLAlchemy's own flag, which this replaces.
            flags = CLIENT_FOUND_ROWS | CLIENT_MULTI_STATEMENTS
            options["connect_args"] = {"client_flag": flags}
        # AUTOCOMMIT, for the round trips: otherwise InnoDB opens a
        # transaction at a read's SELECT, which must be rolled back (one
        # more round trip) lest the connection's next user read an old
        # snapshot, and SQLAlchemy sends a ROLLBACK after each COMMIT too
        # (PyMySQL and asyncmy send whatever they are asked). The writes of
        # more than one statement open a transaction themselves (`atomic`);
        # every one ends it, so there is nothing to reset on return.
        options["isolation_level"] = "AUTOCOMMIT"
        options["pool_reset_on_return"] = None
    if url.get_backend_name() == "postgresql":
        options["pool_recycle"] = 1800  # before proxies and load balancers drop idle ones
        # Reads and one-statement writes need no transaction (`read_options`);
        # the writes that do open one themselves (`atomic`). Set on the
        # engine, not switched on each checkout and back on each return.
        options["isolation_level"] = "AUTOCOMMIT"
    return options


# The C scanner of a default decoder (typeshed types its argument oddly).
_SCAN_JSON = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))


def json_loads(document: str | bytes) -> Any:
    """`json.loads` for the JSON columns a read gives back (such as the
    channel versions of each checkpoint), which `engine_options` hands the
    dialect: a document as the database writes it (UTF-8, no space around
    it) is scanned in one C call, without `json.loads`'s ~90 bytecodes of
    Python (a tenth of the Python that reads a checkpoint on SQLite).
    Anything else, and any error, takes `json.loads` itself."""
    try:
        text = document if isinstance(document, str) else bytes(document).decode()
        value, end = _SCAN_JSON(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError):  # UnicodeDecodeError, JSONDecodeError
        pass
    return json.loads(document)


def read_options(dialect: Dialect) -> dict[str, Any]:
    """Execution options for reads on a saver's own transactions.

    PostgreSQL reads run in autocommit: no BEGIN and COMMIT round trips (its
    default READ COMMITTED gives each statement its own snapshot anyway, so
    a transaction buys a read nothing). psycopg and asyncpg switch it on the
    client, without a round trip of their own. A write that is a single
    statement (`ops.one_round_trip`) takes the same connections: it needs no
    transaction around it.

    SQLite reads need no option: pysqlite begins no transaction for a
    SELECT (and sqlsaver's engines are AUTOCOMMIT anyway).
    """
    if not autocommit_reads(dialect) or _engine_isolation(dialect) == "AUTOCOMMIT":
        return {}
    return {"isolation_level": "AUTOCOMMIT"}


def _engine_isolation(dialect: Dialect) -> str | None:
    """The isolation level an engine was created with (``create_engine(...,
    isolation_level=...)``), if any."""
    return cast(str | None, getattr(dialect, "_on_connect_isolation_level", None))


def autocommit_engine(engine: Engine | AsyncEngine) -> bool:
    """Whether an engine's connections commit each statement (the engine's
    own isolation level, or one set by `execution_options`)."""
    level = engine.get_execution_options().get("isolation_level")
    return (level or _engine_isolation(engine.dialect)) == "AUTOCOMMIT"


def statements_commit(engine: Engine | AsyncEngine) -> bool:
    """Whether a write that is one statement (`ops.one_round_trip`) runs on
    this engine (a saver's read engine) with no transaction of the saver's
    around it: where its connections are AUTOCOMMIT (PostgreSQL's always,
    see `read_options`; `from_url`'s on MySQL and SQLite), and on any
    SQLite engine, where a statement is atomic on its own (no ``BEGIN
    IMMEDIATE``: two statements fewer under the writer's lock; on an engine
    of the caller's the driver may open a transaction itself, which
    `bind._connection` commits)."""
    return engine.dialect.name == "sqlite" or autocommit_engine(engine)


def autocommit_reads(dialect: Dialect) -> bool:
    """Whether a saver's reads (and single-statement writes) run on
    autocommit connections (see `read_options`)."""
    return dialect.name == "postgresql"


def threaded_sync_url(url: URL) -> URL | None:
    """For an async URL whose driver is a thread around a sync one
    (aiosqlite), the sync URL that `AsyncSQLSaver` runs in a worker thread
    instead; None for truly async drivers."""
    if url.get_backend_name() == "sqlite" and url.get_driver_name() == "aiosqlite":
        return url.set(drivername="sqlite")
    return None


# The protocol's SERVER_STATUS_IN_TRANS bit, in the status MySQL sends with
# every reply (PyMySQL's ``server_status``).
SERVER_STATUS_IN_TRANS = 1
# psycopg's and psycopg2's ``TransactionStatus.IDLE``: no transaction open.
_PG_IDLE = 0


def _sqlite3_in_transaction(driver_conn: Any) -> bool:
    return bool(driver_conn.in_transaction)  # sqlite3, and aiosqlite's proxy of it


def _libpq_in_transaction(driver_conn: Any) -> bool:
    return bool(driver_conn.info.transaction_status != _PG_IDLE)


def _mysql_in_transaction(driver_conn: Any) -> bool:
    return bool(driver_conn.server_status & SERVER_STATUS_IN_TRANS)


# How each driver tells, from what it already knows (no round trip), whether
# its connection is in a transaction (`in_transaction`). A driver missing
# here has no connections kept (`keeps_connections`).
_IN_TRANSACTION: dict[str, Callable[[Any], bool]] = {
    "pysqlite": _sqlite3_in_transaction,
    "aiosqlite": _sqlite3_in_transaction,
    "psycopg": _libpq_in_transaction,
    "psycopg2": _libpq_in_transaction,
    "asyncpg": lambda driver_conn: bool(driver_conn.is_in_transaction()),
    "pymysql": _mysql_in_transaction,
    "asyncmy": _mysql_in_transaction,
}


def in_transaction(conn: Connection) -> bool:
    """Whether the driver's connection under ``conn`` is in a transaction,
    by the driver's own account (other sqlite3-like drivers: their
    ``in_transaction``); True for a driver that cannot tell."""
    driver_conn = conn.connection.driver_connection
    tell = _IN_TRANSACTION.get(conn.dialect.driver)
    if tell is None:
        return bool(getattr(driver_conn, "in_transaction", True))
    return tell(driver_conn)


def keeps_connections(engine: Engine, pre_ping: bool) -> bool:
    """Whether a saver keeps connections of its own engine open between
    operations (`bind._KeptConnections`): a checkout from SQLAlchemy's pool
    and back costs ~80k instructions of Python (~20 us), a third of reading
    a checkpoint on SQLite and a fifth of a write on PostgreSQL.

    Only on an AUTOCOMMIT engine (as sqlsaver's are), whose idle connections
    hold no transaction; on a driver that tells whether one does
    (`in_transaction`); with a pool of connections apart (a `QueuePool`:
    ``NullPool`` asks for none kept, and an in-memory SQLite database's
    ``StaticPool`` shares its one connection among threads); and not where
    the caller asked for a ping at each checkout (``pool_pre_ping``), which
    a kept connection would skip."""
    pooled = isinstance(engine.pool, QueuePool)
    known = engine.dialect.driver in _IN_TRANSACTION
    return known and autocommit_engine(engine) and pooled and not pre_ping


def single_writer(dialect: Dialect) -> bool:
    """Whether the database takes one writer at a time (SQLite), so that a
    saver does better to queue its own writes in the process."""
    return dialect.name == "sqlite"


def configure_engine(engine: Engine) -> None:
    """Connection-level settings for an engine sqlsaver created.

    SQLite: write-ahead logging. (Its engines are AUTOCOMMIT, see
    `engine_options`: sqlsaver begins its write transactions itself, as
    ``BEGIN IMMEDIATE``, so that concurrent writers queue on the busy
    timeout instead of failing with "database is locked" when they upgrade
    a read lock, the official saver's failure.)

    MySQL: strict mode, so a key too long for its column is an error rather
    than silently truncated into another thread's key.
    """
    if engine.dialect.name in MYSQL:

        @event.listens_for(engine, "connect")
        def _strict(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')")
            cursor.close()

    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except Exception as error:  # the driver's OperationalError
                # Switching to WAL needs the database to itself, and does not
                # wait for a writer: go on, and let a later connection (or the
                # writer's) switch. WAL is speed, not correctness.
                if "locked" not in str(error):
                    raise
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


# Set in `Connection.info` while `atomic` holds a transaction it began on an
# AUTOCOMMIT connection.
_OWN_TRANSACTION = "sqlsaver_own_transaction"


@contextmanager
def atomic(conn: Connection) -> Iterator[None]:
    """Make statements on a connection all-or-nothing without ending the
    transaction it is in (a caller's, typically).

    Normally a SAVEPOINT. Two cases need care:

    - an AUTOCOMMIT connection has no transaction to join, and would commit
      each statement on its own: the block gets a transaction of its own
      (`own_transaction`), and SAVEPOINTs within it;
    - pysqlite (in its default mode) only opens a transaction before DML,
      and a SAVEPOINT outside a transaction is a transaction of its own whose
      RELEASE commits behind the caller's back: open the real one first.
    """
    if _needs_own_transaction(conn):
        with _own_transaction(conn):
            yield
        return
    if conn.dialect.name == "sqlite":
        if not conn.in_transaction():
            conn.begin()  # on sqlsaver's own engines, this emits the BEGIN
        if not in_transaction(conn):
            conn.exec_driver_sql("BEGIN")
    with conn.begin_nested():
        yield


@contextmanager
def own_transaction(conn: Connection) -> Iterator[None]:
    """On an AUTOCOMMIT connection, which would commit each statement on its
    own, run the block in a transaction all the same: DDL all or nothing,
    and PostgreSQL's transaction-scoped migration lock held to the end.
    Elsewhere the block is in the connection's transaction already."""
    if _needs_own_transaction(conn):
        with _own_transaction(conn):
            yield
    else:
        yield


def rollback(conn: Connection) -> None:
    """ROLLBACK on the driver's cursor, after a failure: what a failed script
    (`runs_scripts`) or `own_transaction` began. The failure is what the
    caller raises: none is on a connection found dead (nothing to roll
    back), and one of the ROLLBACK's own is dropped. A connection left in a
    transaction is then not reused (`bind._KeptConnections.failed`)."""
    if conn.invalidated:
        return
    try:
        control(conn.dialect, "ROLLBACK").run(conn, {})
    except Exception:  # the caller's error says what went wrong
        pass


@contextmanager
def snapshot(conn: Connection) -> Iterator[None]:
    """Make the reads in the block see one state of the database, where
    each statement would otherwise see its own: a read-only transaction on
    an AUTOCOMMIT connection (sqlsaver's own engines), and on pysqlite, which
    begins none for a SELECT. Without it, a checkpoint read by one statement
    may have lost its channel values to a shallow `put` (or `prune`) by the
    next. Inside a transaction already (a caller's, or a write's), the block
    reads in that one.

    SQLite: a deferred BEGIN, whose snapshot is taken at the first read
    (and under WAL holds no writer back). MySQL/MariaDB: REPEATABLE READ,
    whose snapshot InnoDB takes at the first read, whatever the session's
    level (one round trip, where the connection takes scripts). PostgreSQL:
    REPEATABLE READ, as READ COMMITTED takes a snapshot per statement."""
    try:
        inside = in_transaction(conn)
    except conn.dialect.loaded_dbapi.Error:  # a dead connection: the BEGIN
        inside = False  # fails as SQLAlchemy's error, which a retry knows
    if inside:
        yield
        return
    with _driver_transaction(conn, _begin_snapshot(conn)):
        yield


def _begin_snapshot(conn: Connection) -> list[Prepared]:
    dialect = conn.dialect
    if dialect.name == "sqlite":
        return [control(dialect, "BEGIN")]
    if dialect.name == "postgresql":
        return [control(dialect, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")]
    # Not `SET SESSION`: the level of the next transaction only.
    begin = ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION READ ONLY")
    if runs_scripts(conn):
        return [_script(dialect, begin)]
    return [control(dialect, statement) for statement in begin]


@cache
def _script(dialect: Dialect, statements: tuple[str, ...]) -> Prepared:
    return Prepared.script([control(dialect, s) for s in statements])


def runs_scripts(conn: Connection) -> bool:
    """Whether a write may go as one script of statements, BEGIN to COMMIT,
    in one round trip (`Prepared.script`): on MySQL, whose drivers can send
    several statements in one query (asyncmy always; PyMySQL with
    ``CLIENT.MULTI_STATEMENTS``, which sqlsaver's engines set), on an
    AUTOCOMMIT connection in no transaction, and with no one watching its
    statements one by one (`prepared.observed`)."""
    if conn.dialect.name not in MYSQL or not _needs_own_transaction(conn) or observed(conn):
        return False
    flags = getattr(conn.connection.driver_connection, "client_flag", 0)  # PyMySQL's
    return conn.dialect.driver == "asyncmy" or bool(flags & CLIENT_MULTI_STATEMENTS)


def _needs_own_transaction(conn: Connection) -> bool:
    return autocommit(conn) and not conn.info.get(_OWN_TRANSACTION)


@contextmanager
def _own_transaction(conn: Connection) -> Iterator[None]:
    """BEGIN (IMMEDIATE on SQLite: the writer's lock up front) ... COMMIT
    (`_driver_transaction`), marked in ``conn.info`` while it holds."""
    begin = "BEGIN IMMEDIATE" if conn.dialect.name == "sqlite" else "BEGIN"
    with _driver_transaction(conn, [control(conn.dialect, begin)]):
        # The mark goes with the driver's connection, as the transaction
        # does, and comes off the same one: after a disconnect SQLAlchemy
        # has invalidated ``conn``, whose ``info`` would then be a new
        # connection's (a KeyError) or refused (PendingRollbackError), in
        # place of the error that ended the block.
        info = conn.info
        info[_OWN_TRANSACTION] = True
        try:
            yield
        finally:
            del info[_OWN_TRANSACTION]


@contextmanager
def _driver_transaction(conn: Connection, begin: Sequence[Prepared]) -> Iterator[None]:
    """The ``begin`` statements, then COMMIT, or ROLLBACK if the block
    raises; on the driver's cursor (`Prepared`), as SQLAlchemy does not know
    of this transaction anyway."""
    for statement in begin:
        statement.run(conn, {})
    try:
        yield
    except BaseException:
        rollback(conn)
        raise
    control(conn.dialect, "COMMIT").run(conn, {})


@cache
def control(dialect: Dialect, statement: str) -> Prepared:
    """BEGIN (IMMEDIATE), COMMIT or ROLLBACK, compiled once and run on the
    driver's cursor: `exec_driver_sql` costs ~5 us more, under SQLite's
    writer lock and on every MySQL write."""
    return Prepared(text(statement), dialect)


def autocommit(conn: Connection) -> bool:
    """Whether the connection commits each statement (no transaction)."""
    level = conn.get_execution_options().get("isolation_level") or _engine_isolation(conn.dialect)
    return level == "AUTOCOMMIT"


def commits_ddl(dialect: Dialect) -> bool:
    """Whether every DDL statement commits, whatever transaction it is in
    (MySQL, MariaDB: the transaction open before it, and the statement
    itself). A caller's rollback then keeps the DDL of a migration and
    loses its version row, unless that row is committed with it
    (`migrations/env.py`). PostgreSQL and SQLite roll DDL back."""
    return dialect.name in MYSQL


# Any 64-bit number of our own: PostgreSQL's advisory locks are keyed by one.
_PG_MIGRATION_LOCK = 0x5371_5361_7665_7201  # "SqSaver" + 1
_MYSQL_MIGRATION_LOCK = "sqlsaver_migrations"
MIGRATION_LOCK_TIMEOUT = 300  # seconds


@contextmanager
def migration_lock(conn: Connection) -> Iterator[None]:
    """Serialize schema migrations across processes.

    PostgreSQL: a transaction-scoped advisory lock (DDL is transactional, so
    the next process waits until this one's tables are committed). MySQL:
    ``GET_LOCK``, held by the session across DDL's implicit commits. SQLite:
    the database's single writer (sqlsaver's engines ``BEGIN IMMEDIATE``).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        yield
    elif conn.dialect.name in MYSQL:
        lock = {"name": _MYSQL_MIGRATION_LOCK, "timeout": MIGRATION_LOCK_TIMEOUT}
        if conn.execute(text("SELECT GET_LOCK(:name, :timeout)"), lock).scalar() != 1:
            raise TimeoutError(
                f"another process held sqlsaver's migration lock for {MIGRATION_LOCK_TIMEOUT} s"
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:name)"), lock)
    else:
        yield


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ValueTooLargeError(ValueError):
    """A value too large for the database to take in one statement: on
    MySQL/MariaDB, one whose INSERT would exceed the connection's
    ``max_allowed_packet``. Raised before anything is sent: nothing of the
    write is stored, and the connection (and a caller's transaction) goes on."""


# Rows of fewer bytes are not weighed against MySQL's max_allowed_packet,
# which costs a round trip per connection: no server's default is smaller
# (4 MiB on MySQL 5.7, 16 MiB on MariaDB, 64 MiB on MySQL 8). Below a
# smaller setting, such a row meets the server's own error.
PACKET_CHECKED_FROM = 1 << 20
_LARGEST_PACKET = 1 << 30  # MySQL's and MariaDB's maximum max_allowed_packet
_MAX_PACKET = "sqlsaver_max_allowed_packet"  # in `Connection.info`
# What PyMySQL and asyncmy escape with a backslash in a literal (two bytes
# each), and the quotes and prefix around one (``_binary X'...'``).
_ESCAPED = b"\0\n\r\x1a\\'\""
_QUOTED = len("_binary X''")
_HEX_BYTES = "sqlsaver_hex_bytes"  # in `Connection.info`


def limits_statements(dialect: Dialect) -> bool:
    """Whether the server refuses a statement larger than a per-connection
    limit, by dropping the connection (MySQL, MariaDB: max_allowed_packet),
    so large rows are weighed first (`refuse_oversized`)."""
    return dialect.name in MYSQL


def refuse_oversized(
    conn: Connection, table: str, sql: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """On MySQL/MariaDB, raise `ValueTooLargeError` for a row whose INSERT
    (``sql``, into ``table``) the server would refuse, before any is sent:
    one larger than the connection's ``max_allowed_packet`` (the drivers
    send such a row in a statement of its own). The server's answer to one
    is to drop the connection, which says nothing of the limit."""
    limit = None
    hex_bytes = None
    for row in rows:
        # Escaped or in hex, a value takes at most twice its bytes: rows
        # that cannot reach PACKET_CHECKED_FROM are not counted exactly.
        if len(sql) + sum(len(v) for v in row.values() if isinstance(v, (str, bytes))) < (
            PACKET_CHECKED_FROM // 2
        ):
            continue
        if hex_bytes is None:
            hex_bytes = _writes_bytes_in_hex(conn)
        size = len(sql) + sum(_literal_bytes(value, hex_bytes) for value in row.values())
        if size < PACKET_CHECKED_FROM:
            continue
        if limit is None:
            limit = max_allowed_packet(conn)
        if size <= limit:
            continue
        value = max(len(v) for v in row.values() if isinstance(v, (str, bytes)))
        raise ValueTooLargeError(
            f"A value of {value} bytes is too large for MySQL's max_allowed_packet of "
            f"{limit} bytes on this connection: its INSERT into {table} would take {size} "
            "bytes, and the server would refuse it. Raise the limit on the server, e.g. "
            f"`SET GLOBAL max_allowed_packet = {min(1 << size.bit_length(), _LARGEST_PACKET)}` "
            "(connections opened afterwards take it; set max_allowed_packet under [mysqld] "
            "in the server's configuration to keep it across restarts; at most 1 GiB), "
            "or store smaller values."
        )


def _literal_bytes(value: Any, hex_bytes: bool) -> int:
    """Bytes a string or binary value takes in a MySQL statement, quoted and
    escaped as the driver writes it: binary values in hex where it does
    (`_writes_bytes_in_hex`), strings and other binary values with backslash
    escapes (numbers and NULL: a few, not counted)."""
    if isinstance(value, bytes) and hex_bytes:
        return 2 * len(value) + _QUOTED
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, bytes):
        data = value
    else:
        return 0
    return len(data) + sum(map(data.count, _ESCAPED)) + _QUOTED


def _writes_bytes_in_hex(conn: Connection) -> bool:
    """Whether the driver writes a binary value as hex, two bytes of SQL a
    byte (PyMySQL from 1.2: ``_binary X'...'``), rather than escaped
    (asyncmy, older PyMySQL): asked of the driver itself, once per
    connection."""
    info = conn.info
    if _HEX_BYTES not in info:
        escape = conn.connection.driver_connection.escape  # type: ignore[union-attr]
        sample = b"\x80" * 64
        info[_HEX_BYTES] = len(escape(sample)) - len(escape(b"")) >= 2 * len(sample)
    return cast(bool, info[_HEX_BYTES])


def max_allowed_packet(conn: Connection) -> int:
    """The largest statement a MySQL server takes on this connection: its
    session's ``max_allowed_packet`` (read-only, fixed when it connected),
    read once per driver connection."""
    info = conn.info
    if _MAX_PACKET not in info:
        info[_MAX_PACKET] = int(_max_packet_query(conn.dialect).rows(conn, {}, named=False)[0][0])
    return cast(int, info[_MAX_PACKET])


@cache
def _max_packet_query(dialect: Dialect) -> Prepared:
    return Prepared(
        select(literal_column("@@max_allowed_packet").label("max_allowed_packet")), dialect
    )


_MISSING_TABLE = re.compile(
    r"(no such table|does not exist|doesn't exist).*sqlsaver_"
    r"|sqlsaver_\w+['\"]? (does not exist|doesn't exist)",
    re.IGNORECASE | re.DOTALL,
)


# Errors after which the whole transaction can simply run again: deadlocks
# (MySQL 1213, PostgreSQL 40P01) and serialization failures (40001).
_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_RETRYABLE_MYSQL_ERRORS = {1213}


def is_retryable(error: DBAPIError) -> bool:
    """Whether the database aborted a transaction that may simply be rerun
    (the operations are idempotent): a deadlock or serialization failure."""
    for cause in (error.orig, getattr(error.orig, "__cause__", None)):
        if getattr(cause, "sqlstate", None) in _RETRYABLE_SQLSTATES:
            return True
        args = getattr(cause, "args", ())
        if args and args[0] in _RETRYABLE_MYSQL_ERRORS:
            return True
    return False


def is_missing_table(error: BaseException) -> bool:
    """Whether a database error says one of sqlsaver's tables is missing."""
    return bool(_MISSING_TABLE.search(str(error)))
