"""What differs between SQLite, PostgreSQL and MySQL/MariaDB, as facts.

The rest of sqlsaver builds dialect-blind SQLAlchemy Core statements and
asks this module for the few constructs that have no portable spelling
(column types, upsert / insert-ignore, the metadata filter predicate, the
migration lock), for what each database can do (capability flags such as
`chains_inserts` or `single_writer`), and to recognize its errors (missing
tables, deadlocks). Nothing here runs a statement of its own but the
migration lock's. How statements run, and the per-driver facts that sit
below SQLAlchemy's API, are `sqlsaver.execution`'s; the settings of the
engines sqlsaver makes are `sqlsaver.engines`'.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import Callable, Iterator
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
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.selectable import TableValuedAlias

from sqlsaver import galera

MYSQL = ("mysql", "mariadb")


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
    then their writes and values (`ops.read._writes_and_values`)."""
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


def takes_scripts(dialect: Dialect) -> bool:
    """Whether a query may carry several statements, so that a write of two
    inserts goes in one round trip, BEGIN to COMMIT: MySQL's protocol
    (asyncmy always; PyMySQL with ``CLIENT.MULTI_STATEMENTS``, which
    sqlsaver's engines set: `transactions.runs_scripts` checks the
    connection)."""
    return dialect.name in MYSQL


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
# What each database can do
# --------------------------------------------------------------------------


def autocommit_reads(dialect: Dialect) -> bool:
    """Whether a saver's reads (and single-statement writes) run on
    autocommit connections (see `read_options`)."""
    return dialect.name == "postgresql"


def single_writer(dialect: Dialect) -> bool:
    """Whether the database takes one writer at a time (SQLite), so that a
    saver does better to queue its own writes in the process."""
    return dialect.name == "sqlite"


def begin_write(dialect: Dialect) -> str:
    """The BEGIN of a write's own transaction: ``BEGIN IMMEDIATE`` on
    SQLite, which takes the writer's lock up front, so that concurrent
    writers queue on the busy timeout instead of failing with "database is
    locked" when they upgrade a read lock (the official saver's failure)."""
    return "BEGIN IMMEDIATE" if dialect.name == "sqlite" else "BEGIN"


def begin_snapshot(dialect: Dialect) -> tuple[str, ...]:
    """The statements that begin a read-only transaction whose reads all
    see one state of the database. SQLite: a deferred BEGIN, whose snapshot
    is taken at the first read (and under WAL holds no writer back).
    PostgreSQL: REPEATABLE READ, as READ COMMITTED takes a snapshot per
    statement. MySQL/MariaDB: REPEATABLE READ for the next transaction only
    (not ``SET SESSION``), whose snapshot InnoDB takes at the first read."""
    if dialect.name == "sqlite":
        return ("BEGIN",)
    if dialect.name == "postgresql":
        return ("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",)
    return ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION READ ONLY")


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
    ``GET_LOCK``, held by the session across DDL's implicit commits, and
    released when a session dies. A Galera cluster does not replicate
    ``GET_LOCK`` (two nodes both hold it), so there the lock is a row that
    certification makes exclusive cluster-wide (`galera.cluster_lock`).
    SQLite: the database's single writer (sqlsaver's engines ``BEGIN
    IMMEDIATE``).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        yield
    elif conn.dialect.name in MYSQL and galera.is_galera(conn):
        with galera.cluster_lock(conn, _MYSQL_MIGRATION_LOCK, MIGRATION_LOCK_TIMEOUT):
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


def limits_statements(dialect: Dialect) -> bool:
    """Whether the server refuses a statement larger than a per-connection
    limit, by dropping the connection (MySQL, MariaDB: max_allowed_packet),
    so large rows are weighed first (`refuse_oversized`)."""
    return dialect.name in MYSQL


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


# The database's own word that a table is missing: PostgreSQL's SQLSTATE
# 42P01 (undefined_table), MySQL's and MariaDB's error 1146
# (ER_NO_SUCH_TABLE), SQLite's "no such table: ..." (its only code is the
# generic SQLITE_ERROR). Not a pattern over the whole message, which holds
# the statement and so names sqlsaver's tables whatever went wrong: behind a
# transaction-mode pooler, psycopg's 'prepared statement "_pg3_5" does not
# exist', followed by the SQL, was read as missing tables.
_UNDEFINED_TABLE = "42P01"
_MYSQL_NO_SUCH_TABLE = 1146

# PostgreSQL's errors about a named prepared statement: 26000
# (invalid_sql_statement_name: "does not exist"), 42P05
# (duplicate_prepared_statement: "already exists"), and 08P01
# (protocol_violation: "bind message supplies 3 parameters, but prepared
# statement ... requires 17"). A client meets them when its statements reach
# another server session than the one that prepared them, or one where
# another client prepared the same name: a pooler in transaction mode.
_STATEMENT_SQLSTATES = {"26000", "42P05"}
_PROTOCOL_VIOLATION = "08P01"


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


def _driver_errors(error: BaseException) -> tuple[BaseException, ...]:
    """The driver's error under SQLAlchemy's, and what that one wraps (the
    asyncpg exception under SQLAlchemy's adapter of it)."""
    orig = getattr(error, "orig", None) or error
    cause = orig.__cause__
    return (orig,) if cause is None else (orig, cause)


def is_missing_table(error: BaseException) -> bool:
    """Whether a database error says a table is missing (in sqlsaver's
    statements: one of sqlsaver's), by the error's code (see
    `_UNDEFINED_TABLE`)."""
    for cause in _driver_errors(error):
        if getattr(cause, "sqlstate", None) == _UNDEFINED_TABLE:
            return True
        args = getattr(cause, "args", ())
        if args and args[0] == _MYSQL_NO_SUCH_TABLE:
            return True
        if type(cause).__module__ == "sqlite3" and str(cause).startswith("no such table"):
            return True
    return False


def is_prepared_statement_error(error: BaseException) -> bool:
    """Whether a PostgreSQL error is about a named prepared statement (see
    `_STATEMENT_SQLSTATES`): the mark of a transaction-mode pooler under
    a driver that prepares statements."""
    for cause in _driver_errors(error):
        state = getattr(cause, "sqlstate", None)
        if state in _STATEMENT_SQLSTATES:
            return True
        if state == _PROTOCOL_VIOLATION and "prepared statement" in str(cause):
            return True
    return False
