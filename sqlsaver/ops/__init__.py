"""Every database operation of sqlsaver, written once.

Each operation is a plain function over a sync SQLAlchemy `Connection` that
is already inside the transaction it must run in. The runner
(`sqlsaver.execution.runner`) gives it that connection: `SQLSaver`'s in the
caller's thread, `AsyncSQLSaver`'s in a greenlet (SQLAlchemy's bridge, as
`AsyncConnection.run_sync` uses it: the async driver does the I/O). There
is no second copy of any SQL.

`lookups` holds what the others share; `read` the reads of whole
checkpoints, `delta` the parent-chain walk, `write` the `put`s, and
`maintain` deletes, copies, prunes and TTL sweeps.
"""

from sqlsaver.ops.delta import WALK_STEPS, Seeds, get_delta_channel_history
from sqlsaver.ops.lookups import CHUNK, WRITES_AND_VALUES_BINDS, Options
from sqlsaver.ops.maintain import (
    copy_thread,
    delete_for_runs,
    delete_threads,
    prune_keep_latest,
    set_thread_ttl,
    sweep_expired,
)
from sqlsaver.ops.read import PAGE_SIZE, ListQuery, get_tuple, list_page
from sqlsaver.ops.write import Rows, put_rows, store, write_rows

__all__ = [
    "CHUNK",
    "PAGE_SIZE",
    "WALK_STEPS",
    "WRITES_AND_VALUES_BINDS",
    "ListQuery",
    "Options",
    "Rows",
    "Seeds",
    "copy_thread",
    "delete_for_runs",
    "delete_threads",
    "get_delta_channel_history",
    "get_tuple",
    "list_page",
    "prune_keep_latest",
    "put_rows",
    "set_thread_ttl",
    "store",
    "sweep_expired",
    "write_rows",
]
