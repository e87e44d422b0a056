"""Values too large for a statement: refused before anything is sent.

MySQL and MariaDB drop the connection of a client that sends a statement
larger than its ``max_allowed_packet``, an answer that says nothing of the
limit (and that the saver's retry would only repeat). A write whose rows
could reach it is weighed first, as the driver will write it, and refused
with `ValueTooLargeError`, which says what to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, cast

from sqlalchemy import Connection, Dialect, literal_column, select

from sqlsaver.execution.prepared import Prepared


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
