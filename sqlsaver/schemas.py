"""Where sqlsaver's tables live: the connection's default schema, or a
PostgreSQL schema / MySQL database of their own (the ``schema=`` option).

sqlsaver's tables are declared without a schema (`models`). A saver with
``schema="agents"`` runs every statement on a connection whose
``schema_translate_map`` is ``{None: "agents"}``, SQLAlchemy's own way to
place schema-less tables: `Connection.execute` and DDL honour it, and so do
the statements `execution.prepared` compiles once, which are compiled for
the connection's schema (`of`) and cached per schema. The connection is the
one source of the schema: the ops, the schema check and the migrations all
read it from there.

- On an Engine, the saver's engine is the caller's with that execution
  option (`engine_in`); the caller's own engine is left as it is.
- On a caller's Connection or Session, the option is set for the length of
  each operation and then put back (`on_connection`).
- SQLite has no schemas: a schema is refused there (`check_backend`). Its
  only equivalent, an ``ATTACH``-ed database file, would have to be attached
  on every pooled connection and is its own file anyway: give each app its
  own database file instead.
- A schema that does not exist is not created: `migrate.setup` raises
  `migrate.SchemaMissingError`, which names the SQL to run. Creating one
  takes privileges the app's user rarely has, and a mistyped name would
  otherwise start an empty set of checkpoints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine

# A plain SQL identifier: letters, digits and underscores, not starting with
# a digit. PostgreSQL keeps 63 bytes of a name, MySQL 64 characters.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_TRANSLATE = "schema_translate_map"


def check_name(schema: Any) -> str | None:
    """``schema`` if it is None or a plain identifier (it is written into
    SQL, quoted by SQLAlchemy where needed, never bound as a parameter);
    otherwise `TypeError` or `ValueError`.

    Example:
        ```python
        from sqlsaver.schemas import check_name

        assert check_name("agents") == "agents"
        try:
            check_name("agents; DROP TABLE x")
        except ValueError as error:
            print(error)
        ```
    """
    if schema is None:
        return None
    if not isinstance(schema, str):
        raise TypeError(f"schema must be a schema name (str) or None, got {schema!r}")
    if not _IDENTIFIER.fullmatch(schema):
        raise ValueError(
            f"schema must be a plain identifier of up to 63 letters, digits and underscores, "
            f"not starting with a digit (such as 'agents'), got {schema!r}"
        )
    return schema


def check_backend(schema: str | None, backend: str) -> None:
    """Refuse a schema on SQLite, which has none (see the module's doc)."""
    if schema is not None and backend == "sqlite":
        raise ValueError(
            f"SQLite has no schemas, so schema={schema!r} cannot be used there: give each "
            f"app a database file of its own instead (sqlite:///{schema}.db)"
        )


def translate_map(schema: str | None) -> dict[str | None, str] | None:
    """The ``schema_translate_map`` that places sqlsaver's tables in ``schema``."""
    return None if schema is None else {None: schema}


def of(conn: Connection) -> str | None:
    """The schema sqlsaver's tables are in on this connection (None: the
    connection's default). Hot: one dictionary lookup when there is none."""
    translate = conn.get_execution_options().get(_TRANSLATE)
    return translate.get(None) if translate else None


def engine_in(engine: Engine, schema: str | None) -> Engine:
    """``engine``, or where ``schema`` is given, an engine sharing its pool
    whose connections place sqlsaver's tables in ``schema``."""
    if schema is None:
        return engine
    return engine.execution_options(**{_TRANSLATE: translate_map(schema)})


@contextmanager
def on_connection(conn: Connection, schema: str | None) -> Iterator[Connection]:
    """``conn`` with sqlsaver's tables in ``schema`` until the block ends,
    when its own ``schema_translate_map`` (if any) is back. A SQLAlchemy
    2 Connection's options are changed in place: there is no copy of a
    connection to set them on instead."""
    if schema is None:
        yield conn
        return
    before = conn.get_execution_options().get(_TRANSLATE)
    conn.execution_options(**{_TRANSLATE: translate_map(schema)})
    try:
        yield conn
    finally:
        conn.execution_options(**{_TRANSLATE: before})


def described(schema: str | None) -> str:
    """Words for where the tables are, to put after "sqlsaver's tables"."""
    return "" if schema is None else f" in schema {schema!r}"
