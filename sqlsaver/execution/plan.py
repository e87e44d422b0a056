"""How a write of rows (a `put`, a `put_writes`) runs: decided here once.

Three ways, cheapest first:

- **alone**: one round trip that is atomic on its own, with no transaction
  of the saver's around it: one INSERT (of one or several rows), several
  chained into one statement (PostgreSQL, `dialects.chain`), or on MySQL a
  script that begins and commits its own transaction
  (`transactions.runs_scripts`);
- otherwise in a **transaction** (`transactions.atomic`), each insert's rows
  as one driver call: a write too large for one statement, one on a
  database that can do neither of the above, and any write a policy adds
  statements to (shallow mode's prune, TTL's expiry).

The runner asks `Plan.alone` (whether to open a transaction); the write
asks `Plan.form` (which statements to send).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Protocol

from sqlalchemy import Dialect

from sqlsaver import dialects
from sqlsaver.policies import Policies

# Bytes of values one statement of inserts takes at most: a larger write
# takes a transaction, and a driver call per table, which PyMySQL and
# asyncmy cut into statements of 1 MB (MySQL refuses a statement larger
# than its max_allowed_packet, 16 MB by default on MariaDB).
CHAIN_BYTES = 1_000_000

# "each": each insert's rows as one driver call; "chain": every row in one
# statement (`dialects.chain` for several inserts); "script": the inserts
# between BEGIN and COMMIT, sent as one query (MySQL).
Form = Literal["each", "chain", "script"]


class Sized(Protocol):
    """What a plan weighs of a write's rows (`ops.write.Rows`)."""

    @property
    def inserts(self) -> int: ...  # INSERT statements (tables, or update forms)

    @property
    def count(self) -> int: ...  # rows

    @property
    def binds(self) -> int: ...  # bind parameters, one per column of each row

    @property
    def size(self) -> int: ...  # bytes (or characters) of keys and values


class Plan(NamedTuple):
    """How one write runs (see the module's doc)."""

    alone: bool  # atomic on its own: no transaction of the saver's around it
    form: Form


def plan(dialect: Dialect, policies: Policies, rows: Sized) -> Plan:
    """How these rows are stored on this database, under these policies."""
    several = rows.inserts > 1
    one_trip = (
        (not several or dialects.chains_inserts(dialect) or dialects.takes_scripts(dialect))
        and rows.binds <= dialects.max_binds(dialect)
        and rows.size <= CHAIN_BYTES
    )
    if not one_trip or rows.count == 1:
        form: Form = "each"
    elif several and not dialects.chains_inserts(dialect):
        form = "script"
    else:
        form = "chain"
    # A policy's statements (prune, expiry) come after the rows, in the
    # same transaction.
    plain = not policies.shallow and policies.ttl is None
    return Plan(alone=one_trip and plain, form=form)
