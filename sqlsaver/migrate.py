"""sqlsaver's schema migrations, programmatically.

sqlsaver's Alembic revisions live in ``migrations/`` (shipped inside the wheel
as ``sqlsaver.migrations``) and record themselves in a private version table,
``sqlsaver_alembic_version``: an application's own ``alembic_version`` is never
read or written.

For applications that run migrations from their own code:

```python
from sqlalchemy import create_engine

import sqlsaver.migrate

engine = create_engine("sqlite:///app.db")
sqlsaver.migrate.upgrade(engine)  # to head; or a Connection, in its transaction
print(sqlsaver.migrate.current(engine))  # "0004", or None when not set up
print(sqlsaver.migrate.status(engine))  # "current" | "behind" | "ahead" | "missing"
```

`current`, `status`, `upgrade` and `downgrade` take ``schema=`` too, for
tables kept in a PostgreSQL schema or MySQL database of their own (the
savers' ``schema`` option; `setup` and `require_current` read it from the
connection a saver gives them): there, the version table is the schema's
own, so each schema migrates on its own.

With an async engine: ``await async_conn.run_sync(sqlsaver.migrate.upgrade)``.

A migration that does not finish leaves no half-migrated schema behind.
PostgreSQL and SQLite run it in one transaction, undone whole. MySQL and
MariaDB commit every DDL statement, whatever transaction it is in, so there
each revision's version row is committed as soon as its DDL is done
(``migrations/env.py``), which a caller's rollback cannot undo either; and
each revision creates only what is missing (`missing`), so one interrupted
between two statements (a crash) completes when `setup` or `upgrade` runs
again. The version table never names a revision whose tables are not all
there.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import (
    Column,
    Connection,
    Dialect,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    inspect,
    select,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from sqlsaver import dialects, schemas
from sqlsaver.execution import transactions

T = TypeVar("T")

VERSION_TABLE = "sqlsaver_alembic_version"
# Every revision this sqlsaver knows, oldest first (a test holds this equal to
# the scripts in migrations/versions): a database at another revision was
# migrated by a newer sqlsaver.
REVISIONS = ("0001", "0002", "0003", "0004")
HEAD = REVISIONS[-1]

Status = Literal["current", "behind", "ahead", "missing"]

_version = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), primary_key=True))


class SchemaError(RuntimeError):
    """sqlsaver's tables are not at the revision this sqlsaver needs."""


class SchemaNotReadyError(SchemaError):
    """sqlsaver's tables are missing, or at an older revision: upgrade them."""


class SchemaTooNewError(SchemaError):
    """sqlsaver's tables were migrated by a newer sqlsaver than this one."""


class SchemaMissingError(SchemaNotReadyError):
    """The PostgreSQL schema or MySQL/MariaDB database given as ``schema=``
    does not exist; the message names the SQL that creates it."""


def migrations_dir() -> Path:
    """Where the Alembic environment of this installation lives: inside the
    installed package, or beside it in a source checkout."""
    try:
        return Path(str(resources.files("sqlsaver.migrations")))
    except ModuleNotFoundError:  # imported from a checkout, not installed
        return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(
    connection: Connection | None = None, url: str | None = None, schema: str | None = None
) -> Any:
    """An Alembic `Config` for sqlsaver's revisions.

    With ``connection`` the migrations run on it, inside its transaction;
    otherwise on ``url`` (offline with ``--sql``). ``schema``: where the
    tables are (see `sqlsaver.schemas`; a connection's own setting is
    used where this is None).
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schemas.check_name(schema)
    return config


# -- reading the version: one query, no Alembic --------------------------------


def _current(conn: Connection, locking: bool = False) -> str | None:
    # Atomic (a SAVEPOINT): on PostgreSQL a missing table would otherwise
    # abort the caller's whole transaction. A locking read sees what other
    # sessions committed since this transaction's snapshot (MySQL).
    query = select(_version.c.version_num)
    if locking:
        query = query.with_for_update(read=True)
    try:
        with transactions.atomic(conn):
            return conn.execute(query).scalar()
    except DBAPIError as error:
        if dialects.is_missing_table(error):
            return None
        raise


def _status(revision: str | None) -> Status:
    if revision is None:
        return "missing"
    if revision == HEAD:
        return "current"
    return "behind" if revision in REVISIONS else "ahead"


def _on(bind: Engine | Connection, fn: Callable[[Connection], T], schema: str | None) -> T:
    schemas.check_name(schema)
    schemas.check_backend(schema, bind.dialect.name)
    if isinstance(bind, Engine):
        with schemas.engine_in(bind, schema).begin() as conn:
            return fn(conn)
    with schemas.on_connection(bind, schema):
        return fn(bind)


def current(bind: Engine | Connection, schema: str | None = None) -> str | None:
    """The revision sqlsaver's tables (in ``schema``) are at, or None when
    not set up."""
    return _on(bind, _current, schema)


def status(bind: Engine | Connection, schema: str | None = None) -> Status:
    """``"current"`` (at this sqlsaver's head), ``"behind"`` (upgrade),
    ``"ahead"`` (migrated by a newer sqlsaver) or ``"missing"``."""
    return _status(current(bind, schema))


def describe(revision: str | None) -> str:
    """What a revision means to this sqlsaver, in words."""
    return {
        "missing": "not set up",
        "current": f"at head {HEAD}",
        "behind": f"behind head {HEAD}: upgrade",
        "ahead": f"unknown to this sqlsaver (head {HEAD}): migrated by a newer sqlsaver",
    }[_status(revision)]


# A placeholder without characters a URL escapes: replaced after rendering.
_PASSWORD_SLOT = "SQLSAVERPASSWORDSLOT"


def shown_url(url: URL) -> str:
    """``url`` to show in a message: the password (if any) as
    ``<password>``, never the real one; the driver as given."""
    if url.password is None:
        return url.render_as_string(hide_password=False)
    rendered = url.set(password=_PASSWORD_SLOT).render_as_string(hide_password=False)
    return rendered.replace(_PASSWORD_SLOT, "<password>")


def upgrade_command(url: URL | None, schema: str | None = None) -> str:
    """The CLI command, in backticks, that brings ``url``'s tables (in
    ``schema``) to head, to paste into a shell (the CLI takes sync and async
    URLs alike); a template where the URL has a password, to put in for
    ``<password>``, or where there is no URL (a saver on a caller's
    connection), for ``<database url>``."""
    shown = "'<database url>'" if url is None else shlex.quote(shown_url(url))
    in_schema = f" --schema {schema}" if schema is not None else ""
    command = f"`python -m sqlsaver upgrade --url {shown}{in_schema}`"
    if url is not None and url.password is not None:
        command += " (with the password in place of <password>)"
    return command


def create_schema_sql(dialect: Dialect, schema: str) -> str:
    """The SQL that creates ``schema``, quoted as SQLAlchemy quotes it."""
    quoted = dialect.identifier_preparer.quote_schema(schema)
    if dialect.name == "postgresql":
        return f"CREATE SCHEMA {quoted}"
    return f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4"


def require_schema(conn: Connection) -> None:
    """Raise `SchemaMissingError` if the connection's schema (`schemas.of`)
    does not exist. sqlsaver does not create it: that takes privileges an
    app's user rarely has, and a mistyped name would quietly start an
    empty set of checkpoints."""
    schema = schemas.of(conn)
    if schema is None or inspect(conn).has_schema(schema):
        return
    create = create_schema_sql(conn.dialect, schema)
    raise SchemaMissingError(
        f"schema {schema!r} does not exist in {shown_url(conn.engine.url)}; sqlsaver does not "
        f"create it. Create it once, as a user allowed to: {create}"
    )


def require_current(conn: Connection, url: URL | None = None) -> None:
    """Raise a `SchemaError` saying what to do unless the tables are at head.

    ``url``: the database as the caller knows it, for the message (by
    default the connection's; an async saver on aiosqlite runs on a sync
    engine, whose URL is not the one it was given)."""
    revision = _current(conn)
    state = _status(revision)
    if state == "current":
        return
    url = url or conn.engine.url
    schema = schemas.of(conn)
    where = f"{shown_url(url)}{schemas.described(schema)}"
    command = upgrade_command(url, schema)
    if state == "missing":
        raise SchemaNotReadyError(
            f"sqlsaver's tables do not exist in {where}. Create them with `saver.setup()` "
            f"(`await saver.setup()` for AsyncSQLSaver), or in deployment with: {command}"
        )
    if state == "behind":
        raise SchemaNotReadyError(
            f"sqlsaver's tables in {where} are at revision {revision}; this sqlsaver needs "
            f"{HEAD}. Upgrade them with `saver.setup()`, or with: {command}"
        )
    raise SchemaTooNewError(
        f"sqlsaver's tables in {where} are at revision {revision}, which this sqlsaver "
        f"(head {HEAD}) does not know: they were migrated by a newer sqlsaver. "
        "Upgrade the sqlsaver package, or downgrade the tables with the newer one."
    )


# -- changing the schema -----------------------------------------------------


def _run_alembic(
    conn: Connection, command_name: str, revision: str, serde: SerializerProtocol | None = None
) -> None:
    from alembic import command

    require_schema(conn)
    with transactions.own_transaction(conn), dialects.migration_lock(conn):
        if _status(_current(conn, locking=True)) == "ahead":
            require_current(conn)  # raises SchemaTooNewError, not Alembic's riddle
        config = alembic_config(conn)
        config.attributes["serde"] = serde
        getattr(command, command_name)(config, revision)


def setup(conn: Connection) -> None:
    """Bring sqlsaver's tables to head, safely when several processes do it
    at once, and with a single query when they already are at head.

    Concurrent callers queue on a lock (an advisory lock on PostgreSQL,
    ``GET_LOCK`` on MySQL, the write lock on SQLite); each re-reads the
    version under it, so only the first one migrates.

    On MySQL/MariaDB a migration commits ``conn``'s transaction (its DDL
    would anyway), each revision's version row with it: see the module doc.

    Tables kept in a schema of their own (the connection's, `schemas.of`)
    need that schema to exist: `SchemaMissingError` says how to create it.
    """
    if _current(conn) == HEAD:
        return
    require_schema(conn)
    with dialects.migration_lock(conn):
        revision = _current(conn, locking=True)
        if revision == HEAD:
            return
        if _status(revision) == "ahead":
            require_current(conn)  # raises SchemaTooNewError
        from alembic import command

        command.upgrade(alembic_config(conn), "head")


def upgrade(bind: Engine | Connection, revision: str = "head", schema: str | None = None) -> None:
    """Upgrade sqlsaver's tables (in ``schema``) to ``revision`` (under the
    migration lock). On MySQL/MariaDB this commits a Connection's
    transaction (see `setup`)."""
    _on(bind, lambda conn: _run_alembic(conn, "upgrade", revision), schema)


def downgrade(
    bind: Engine | Connection,
    revision: str,
    serde: SerializerProtocol | None = None,
    schema: str | None = None,
) -> None:
    """Downgrade sqlsaver's tables to ``revision`` (``"base"`` drops them).

    Below revision 0004 stored checkpoints are re-encoded (their channel
    versions move back inside them), with ``serde``: pass the saver's own
    (``saver.serde``) if it is not LangGraph's default, e.g. encrypted.
    """
    _on(bind, lambda conn: _run_alembic(conn, "downgrade", revision, serde), schema)


# -- for the revision scripts: do only what is left to do ------------------------
#
# On MySQL and MariaDB each DDL statement commits on its own, so a revision
# interrupted between two of them (a crash, a lost connection, an error)
# leaves some of its tables, columns or indexes behind, while the version
# table still names the revision before. Each revision therefore creates
# only what is missing, and drops only what is there: run again, it
# completes. (Its version row is committed with it: `migrations/env.py`.)


def _exists(table: str, column: str | None, index: str | None) -> bool:
    from alembic import op

    found = inspect(op.get_bind())  # a fresh one: no cached reflection
    where = schema()  # reflection takes no schema_translate_map: named here
    if not found.has_table(table, schema=where):
        return False
    if column is not None:
        return column in {c["name"] for c in found.get_columns(table, schema=where)}
    if index is not None:
        return index in {i["name"] for i in found.get_indexes(table, schema=where)}
    return True


def schema() -> str | None:
    """In a revision script: the schema sqlsaver's tables are in, for
    every `op` call's ``schema=`` (None: the connection's default). Alembic
    places its version table there too (``version_table_schema``); some of
    its operations (``add_column``, batch ones) ignore a connection's
    schema_translate_map, so the scripts name the schema themselves."""
    from alembic import op

    where: str | None = op.get_context().version_table_schema
    return where


def _offline() -> bool:
    from alembic import context

    return bool(context.is_offline_mode())


def missing(table: str, *, column: str | None = None, index: str | None = None) -> bool:
    """In a revision script: whether ``table`` (or its ``column``, or its
    ``index``) is still to be created. Offline (``--sql``): True."""
    return _offline() or not _exists(table, column, index)


def present(table: str, *, column: str | None = None, index: str | None = None) -> bool:
    """In a revision script: whether ``table`` (or its ``column``, or its
    ``index``) is still to be dropped. Offline (``--sql``): True."""
    return _offline() or _exists(table, column, index)


def primary_key_name(name: str) -> str | None:
    """In a revision script: the name for a primary key constraint, or None
    on MySQL/MariaDB, which name every primary key ``PRIMARY`` and, given
    another name, ignore it with a warning (that asyncmy logs): the same
    schema either way."""
    from alembic import op

    return None if op.get_context().dialect.name in dialects.MYSQL else name


def target_metadata(dialect_name: str) -> MetaData:
    """The models' metadata, for Alembic's ``target_metadata`` on this
    dialect. Alembic names the constraints of the tables a revision creates
    by its naming convention, so on MySQL/MariaDB it gets one without a
    primary key name (see `primary_key_name`)."""
    from sqlsaver.models import NAMING_CONVENTION, Base

    if dialect_name not in dialects.MYSQL:
        return Base.metadata
    convention = {k: v for k, v in NAMING_CONVENTION.items() if k != "pk"}
    metadata = MetaData(naming_convention=convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    return metadata


def create_version_table(conn: Connection) -> None:
    """Create the version table as Alembic would, unless it exists, but with
    no name for its primary key on MySQL/MariaDB (see `primary_key_name`)."""
    if conn.dialect.name not in dialects.MYSQL:
        return  # Alembic's own, named ``<table>_pkc``, as ever
    table = Table(
        VERSION_TABLE,
        MetaData(),
        Column("version_num", String(32), nullable=False),
        PrimaryKeyConstraint("version_num"),
        schema=schemas.of(conn),
    )
    table.create(conn, checkfirst=True)


# -- living beside an application's own Alembic --------------------------------


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """An ``include_object`` hook for an application's Alembic ``env.py``
    that keeps sqlsaver's tables out of ``alembic revision --autogenerate``:
    pass ``include_object=include_object`` to ``context.configure(...)``
    there (docs/migrations.md shows what autogenerate then sees)."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    table_name = name if type_ == "table" else getattr(table, "name", None)
    return not (table_name or "").startswith("sqlsaver_")


def revisions() -> Sequence[str]:
    """The revisions of the installed Alembic scripts, oldest first."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return [s.revision for s in reversed(list(scripts.walk_revisions()))]
