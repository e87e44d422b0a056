"""Transactions: which a statement runs in, and the ones sqlsaver begins
itself on the driver's cursor.

sqlsaver's own engines are AUTOCOMMIT (`engines.engine_options`): a read or
a one-statement write needs no transaction, and saves its BEGIN and COMMIT
round trips. A write of several statements begins its own (`atomic`), as
``BEGIN`` (``BEGIN IMMEDIATE`` on SQLite) sent on the driver's cursor as a
`Prepared` statement: SQLAlchemy does not know of this transaction, so it
is marked in ``Connection.info`` while it holds, and ended here, whatever
happens. On a caller's Connection or Session a write joins the caller's
transaction under a SAVEPOINT instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlsaver import dialects, galera
from sqlsaver.engines import CLIENT_MULTI_STATEMENTS
from sqlsaver.execution.prepared import Prepared, observed
from sqlsaver.execution.sqlalchemy_private import engine_isolation


def read_options(dialect: Dialect) -> dict[str, Any]:
    """Execution options for reads on a saver's own transactions.

    PostgreSQL reads run in autocommit: no BEGIN and COMMIT round trips (its
    default READ COMMITTED gives each statement its own snapshot anyway, so
    a transaction buys a read nothing). psycopg and asyncpg switch it on the
    client, without a round trip of their own. A write that is a single
    statement (`Plan.alone`) takes the same connections: it needs no
    transaction around it.

    SQLite reads need no option: pysqlite begins no transaction for a
    SELECT (and sqlsaver's engines are AUTOCOMMIT anyway).
    """
    if not dialects.autocommit_reads(dialect) or engine_isolation(dialect) == "AUTOCOMMIT":
        return {}
    return {"isolation_level": "AUTOCOMMIT"}


def autocommit_engine(engine: Engine | AsyncEngine) -> bool:
    """Whether an engine's connections commit each statement (the engine's
    own isolation level, or one set by `execution_options`)."""
    level = engine.get_execution_options().get("isolation_level")
    return (level or engine_isolation(engine.dialect)) == "AUTOCOMMIT"


def statements_commit(engine: Engine | AsyncEngine) -> bool:
    """Whether a write that is one statement (`Plan.alone`) runs on
    this engine (a saver's read engine) with no transaction of the saver's
    around it: where its connections are AUTOCOMMIT (PostgreSQL's always,
    see `read_options`; `from_url`'s on MySQL and SQLite), and on any
    SQLite engine, where a statement is atomic on its own (no ``BEGIN
    IMMEDIATE``: two statements fewer under the writer's lock; on an engine
    of the caller's the driver may open a transaction itself, which
    `Runner._connection` commits)."""
    return engine.dialect.name == "sqlite" or autocommit_engine(engine)


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
KNOWS_TRANSACTIONS: dict[str, Callable[[Any], bool]] = {
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
    tell = KNOWS_TRANSACTIONS.get(conn.dialect.driver)
    if tell is None:
        return bool(getattr(driver_conn, "in_transaction", True))
    return tell(driver_conn)


# Set in `Connection.info` while `atomic` holds a transaction it began on an
# AUTOCOMMIT connection.
_OWN_TRANSACTION = "sqlsaver_own_transaction"


def _began(conn: Connection) -> bool:
    """`in_transaction`, asked before a BEGIN; False on a dead connection,
    whose BEGIN then fails as SQLAlchemy's error (which a retry knows),
    where the driver's would escape unconverted."""
    try:
        return in_transaction(conn)
    except conn.dialect.loaded_dbapi.Error:
        return False


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
        if not _began(conn):
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
    transaction is then not reused (`kept.KeptConnections.failed`)."""
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
    reads in that one. How each database begins it: `dialects.begin_snapshot`
    (on MySQL two statements, sent as one script where the connection takes
    scripts: one round trip)."""
    if _began(conn):
        yield
        return
    with _driver_transaction(conn, _begin_snapshot(conn)):
        yield


def _begin_snapshot(conn: Connection) -> list[Prepared]:
    begin = dialects.begin_snapshot(conn.dialect)
    if len(begin) > 1 and runs_scripts(conn):
        return [_script(conn.dialect, begin)]
    return [control(conn.dialect, statement) for statement in begin]


@cache
def _script(dialect: Dialect, statements: tuple[str, ...]) -> Prepared:
    return Prepared.script([control(dialect, s) for s in statements])


def runs_scripts(conn: Connection) -> bool:
    """Whether a write may go as one script of statements, BEGIN to COMMIT,
    in one round trip (`Prepared.script`): on MySQL, whose drivers can send
    several statements in one query (asyncmy always; PyMySQL with
    ``CLIENT.MULTI_STATEMENTS``, which sqlsaver's engines set), on an
    AUTOCOMMIT connection in no transaction, and with no one watching its
    statements one by one (`observed`)."""
    if (
        not dialects.takes_scripts(conn.dialect)
        or not _needs_own_transaction(conn)
        or observed(conn)
    ):
        return False
    flags = getattr(conn.connection.driver_connection, "client_flag", 0)  # PyMySQL's
    return conn.dialect.driver == "asyncmy" or bool(flags & CLIENT_MULTI_STATEMENTS)


def _needs_own_transaction(conn: Connection) -> bool:
    return autocommit(conn) and not conn.info.get(_OWN_TRANSACTION)


@contextmanager
def _own_transaction(conn: Connection) -> Iterator[None]:
    """BEGIN (`dialects.begin_write`) ... COMMIT (`_driver_transaction`),
    marked in ``conn.info`` while it holds."""
    begin = galera.begin_write(dialects.begin_write(conn.dialect), conn.info)
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
    level = conn.get_execution_options().get("isolation_level") or engine_isolation(conn.dialect)
    return level == "AUTOCOMMIT"
