"""What differs on a MariaDB Galera cluster, as facts and the one lock.

A Galera node is a MariaDB server with ``wsrep_on=ON``: every node takes
writes, and a transaction is certified against the others' at COMMIT
(optimistically: row locks are not replicated, and the loser of a conflict
gets error 1213, "deadlock", which sqlsaver's runner retries like any
deadlock). Two things sqlsaver relies on on a single server do not hold
across nodes, and are handled here:

- ``GET_LOCK`` is local to a node: the same lock taken on two nodes is held
  twice, without an error. The migration lock is therefore a row in a
  table of its own (`cluster_lock`), whose INSERT certification makes
  exclusive cluster-wide.
- A node applies the others' writes shortly after they commit, so a read
  right after a write made on another node may not see it: sqlsaver's own
  engines set ``wsrep_sync_wait`` (`SYNC_WAIT`) on their connections.

Detected by ``SHOW VARIABLES LIKE 'wsrep_on'`` (MySQL has no such
variable; a MariaDB server outside a cluster says OFF).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, TextClause, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from sqlsaver import schemas

# Causality checks for reads (SELECT, SHOW, BEGIN): a node first applies
# everything the cluster committed before the read began. Not for writes,
# which certification orders anyway.
SYNC_WAIT = 1

# The migration lock's table: created outside the Alembic revisions, because
# it must exist before the lock that guards creating everything else.
# `migrations/env.py` leaves it out of Alembic's comparisons.
LOCK_TABLE = "sqlsaver_migration_lock"
_DUPLICATE_KEY = 1062
_DEADLOCK = 1213  # on Galera also a certification conflict
# DDL replicated in total order makes a concurrent reader of the table wait
# or fail with this ("skipped since its definition is being modified").
_CONCURRENT_DDL = 1684
POLL_SECONDS = 0.2
# Where a held lock keeps its renewal, in the migration connection's ``info``.
_RENEW = "sqlsaver_galera_lock_renew"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LockStatements:
    """The lock's statements on its table, in the saver's schema (a MySQL
    database: `schemas`) if it has one, so that apps in different schemas
    lock apart, as their tables are apart."""

    create: TextClause
    take_over: TextClause  # a stale holder's row goes first
    take: TextClause  # then ours, unless another's is there
    release: TextClause
    renew: TextClause  # a holder's row, good for another ``timeout``

    @classmethod
    def of(cls, schema: str | None, dialect: Dialect) -> _LockStatements:
        # `schemas.check_name` let the name in (a plain identifier), quoted
        # where it is a reserved word (`order`).
        quoted = dialect.identifier_preparer.quote_schema(schema) if schema else None
        table = f"{quoted}.{LOCK_TABLE}" if quoted else LOCK_TABLE
        return cls(
            create=text(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                " name VARCHAR(64) NOT NULL PRIMARY KEY,"
                " holder VARCHAR(64) NOT NULL,"
                " expires_at DOUBLE NOT NULL"
                ") ENGINE=InnoDB"
            ),
            take_over=text(
                f"DELETE FROM {table} WHERE name = :name AND expires_at < UNIX_TIMESTAMP()"
            ),
            take=text(
                f"INSERT INTO {table} (name, holder, expires_at)"
                " VALUES (:name, :holder, UNIX_TIMESTAMP() + :timeout)"
            ),
            release=text(f"DELETE FROM {table} WHERE name = :name AND holder = :holder"),
            renew=text(
                f"UPDATE {table} SET expires_at = UNIX_TIMESTAMP() + :timeout"
                " WHERE name = :name AND holder = :holder"
            ),
        )


# Marks, in a pooled connection's ``info``, a session whose reads wait
# (`wait_for_writes`): its writes' BEGIN skips the wait (`begin_write`).
READS_WAIT = "sqlsaver_galera_reads_wait"


def wait_for_writes(dbapi_cursor: Any, info: dict[Any, Any]) -> None:
    """On a Galera node, make the session's reads wait until the node has
    applied what the cluster committed before them (`SYNC_WAIT`), unless a
    ``wsrep_sync_wait`` is set already (the server's global, or a caller's
    ``init_command``): theirs wins. Elsewhere nothing (one SHOW, on a new
    connection only).

    Why: a LangGraph app behind a load balancer runs a thread's next turn on
    whichever node, and a turn starts by reading the thread's latest
    checkpoint. Read on a node that has not applied the last turn's COMMIT
    yet, that is the checkpoint before it, and the turn forks the thread's
    history from there, silently (the alternating-nodes cluster test failed
    1 run in 3 without it). It costs a causal wait (a round of the group
    communication) per read and per BEGIN. Of the six a turn of the
    cluster tests' graph, four were the BEGINs of writes, which need none
    (certification orders writes, and the reads inside a write transaction
    wait on their own): with all six, a turn took 30.6 ms instead of 21.7
    on a loopback cluster here. So the connection is marked in ``info``,
    and its writes begin without the wait (`begin_write`): two waits a
    turn, whose cost is within this shared machine's noise (one writer:
    17.4 ms a turn with them, 14.2 without, where runs of either range
    over 14-29 ms; `benchmarks/galera.py`). Between hosts, each is a
    network round trip."""
    dbapi_cursor.execute("SHOW VARIABLES WHERE Variable_name IN ('wsrep_on', 'wsrep_sync_wait')")
    values = {str(name).lower(): str(value) for name, value in dbapi_cursor.fetchall()}
    if values.get("wsrep_on", "").upper() == "ON" and values.get("wsrep_sync_wait") == "0":
        dbapi_cursor.execute(f"SET SESSION wsrep_sync_wait = {SYNC_WAIT}")
        info[READS_WAIT] = True


def begin_write(begin: str, info: dict[Any, Any]) -> str:
    """The BEGIN of a write on a connection: on one whose reads wait
    (`wait_for_writes`), MariaDB's ``SET STATEMENT`` lifts the wait for
    that BEGIN alone."""
    return f"SET STATEMENT wsrep_sync_wait = 0 FOR {begin}" if info.get(READS_WAIT) else begin


def is_galera(conn: Connection) -> bool:
    """Whether ``conn`` (MySQL/MariaDB) is on a Galera node."""
    row = conn.execute(text("SHOW VARIABLES LIKE 'wsrep_on'")).first()
    return row is not None and str(row[1]).upper() == "ON"


def _code(error: DBAPIError) -> Any:
    args = getattr(error.orig, "args", ())
    return args[0] if args else None


@contextmanager
def cluster_lock(conn: Connection, name: str, timeout: float) -> Iterator[None]:
    """Hold the lock ``name`` across a Galera cluster while the block runs.

    The lock is a row of `LOCK_TABLE`, inserted and committed on a
    connection of its own (``conn``'s engine's: ``conn`` may be in a
    transaction, which the lock must not commit). Two nodes inserting it at
    once both succeed locally, and certification lets one commit: the other
    gets 1213; one inserting it later gets a duplicate key. Either waits
    (``SLEEP`` on the server, so that an async caller's event loop is not
    blocked) and tries again. The block runs once the row is ours, and
    deleting it releases the lock.

    Once ours, the node has applied the previous holder's DELETE, and so all
    it committed before (Galera commits in one order everywhere): the block
    reads the schema that holder left.

    A holder that dies keeps its row (unlike ``GET_LOCK``, which ends with
    its session): a row older than ``timeout`` seconds is stale and taken
    over. A live holder renews it at each revision (`renew_lock`), so only
    one revision that runs longer than ``timeout`` could be overtaken. A
    waiter waits that long and a little more, so that it outlasts a dead
    holder's row, then raises `TimeoutError`.

    The lock needs a second connection of ``conn``'s engine while ``conn``
    is in use: an engine of the caller's with a pool of one connection
    waits for its pool timeout.
    """
    holder = uuid.uuid4().hex
    params = {"name": name, "holder": holder, "timeout": timeout}
    with conn.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as own:
        statements = _LockStatements.of(schemas.of(conn), conn.dialect)
        _create_table(own, statements.create)
        deadline = time.monotonic() + timeout + 10 * POLL_SECONDS
        while True:
            try:
                own.execute(statements.take_over, params)
                own.execute(statements.take, params)
                break
            except DBAPIError as error:
                if _code(error) not in (_DUPLICATE_KEY, _DEADLOCK, _CONCURRENT_DDL):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"another process held sqlsaver's migration lock (a row of {LOCK_TABLE}) "
                    f"for {timeout} s"
                )
            own.execute(text("DO SLEEP(:s)"), {"s": POLL_SECONDS * random.uniform(0.5, 1.5)})
        # ``conn`` may be on another node than ``own`` (a caller's engine
        # behind a load balancer): one causal read there, and its node has
        # applied what the cluster committed before, the last holder's work.
        conn.execute(text(f"SET STATEMENT wsrep_sync_wait = {SYNC_WAIT} FOR SELECT 1"))
        # A migration renews the row at each revision (`renew_lock`), so a
        # long one is not taken for a dead holder's.
        conn.info[_RENEW] = lambda: _renew(own, statements.renew, params)
        try:
            yield
        finally:
            conn.info.pop(_RENEW, None)
            try:
                own.execute(statements.release, params)
            except DBAPIError as error:  # the node went away: the block's error is the news
                logger.warning(
                    "could not release sqlsaver's migration lock (its row of %s stays until "
                    "it is %s s old): %s",
                    LOCK_TABLE,
                    timeout,
                    error,
                )


def _renew(own: Connection, renew: TextClause, params: dict[str, Any]) -> None:
    """Renew a held lock's row; a failure (a conflict, the node going away)
    is logged, not raised: the migration it runs beside is the work, and
    the row stays good until its time is up."""
    try:
        own.execute(renew, params)
    except DBAPIError as error:
        logger.warning("could not renew sqlsaver's migration lock: %s", error)


def renew_lock(conn: Connection) -> None:
    """Renew the migration lock ``conn`` holds on a Galera cluster (a row
    that would otherwise be taken over as a dead holder's once
    ``timeout`` old); nothing elsewhere. Called after each revision."""
    renew = conn.info.get(_RENEW)
    if renew is not None:
        renew()


def _create_table(own: Connection, create: TextClause) -> None:
    """CREATE TABLE IF NOT EXISTS, which nodes doing it at once may see
    fail as a conflict with the same DDL of another (replicated in total
    order): then it exists, or the next try makes it."""
    for attempt in range(5):
        try:
            own.execute(create)
            return
        except DBAPIError as error:
            if _code(error) not in (_DEADLOCK, _CONCURRENT_DDL) or attempt == 4:
                raise
            own.execute(text("DO SLEEP(:s)"), {"s": POLL_SECONDS})
