"""Alembic environment of sqlsaver.

Runs on the connection handed over in ``config.attributes["connection"]``
(sqlsaver's own `setup()` and `sqlsaver.migrate`), or on a URL from
``-x url=...``, the ``SQLSAVER_URL`` environment variable or
``sqlalchemy.url``, sync or async driver alike. Offline (``--sql``), it
prints the DDL for that URL's dialect without connecting.

sqlsaver's tables and its version table are in the connection's schema
(`sqlsaver.schemas`: a saver's ``schema=`` option), or the one given by
``config.attributes["schema"]`` or ``-x schema=...``.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, make_url, pool
from sqlalchemy.ext.asyncio import create_async_engine

from sqlsaver import dialects, schemas
from sqlsaver.galera import LOCK_TABLE, renew_lock
from sqlsaver.migrate import VERSION_TABLE, create_version_table, target_metadata

config = context.config
# Logging as alembic.ini sets it ("Running upgrade ..." lines), when run from
# it; sqlsaver's own calls (setup(), the CLI) leave the app's logging alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
OPTIONS = {
    "version_table": VERSION_TABLE,
    # Only sqlsaver's tables are ever compared, created or dropped.
    # (Not the migration lock's table on Galera: the lock's, not a revision's.)
    "include_name": lambda name, type_, _parent: (
        type_ != "table" or (name.startswith("sqlsaver_") and name != LOCK_TABLE)
    ),
    "render_as_batch": True,  # SQLite alters tables by copying them
    "compare_type": True,
}


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("SQLSAVER_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit("No database given: pass -x url=<database url> or set SQLSAVER_URL")
    return url


def _schema(backend: str) -> str | None:
    """The schema given to this run, if any (a connection may carry one);
    refused on SQLite, which has none."""
    given = config.attributes.get("schema") or context.get_x_argument(as_dictionary=True).get(
        "schema"
    )
    schema = schemas.check_name(given)
    schemas.check_backend(schema, backend)
    return schema


def _commit_revision(ctx: MigrationContext, **_: Any) -> None:
    """Commit a revision's version row as soon as it is written. On MySQL
    and MariaDB the revision's DDL has committed already, whatever
    transaction it ran in (the caller's, say), and the next revision's DDL
    would commit the row anyway: committing it now means that a rollback
    of that transaction cannot keep the DDL and lose the row, which would
    leave the version table behind the schema."""
    if ctx.connection is not None:  # None only for an SQL script (--sql)
        ctx.connection.exec_driver_sql("COMMIT")


def _run(connection: Connection) -> None:
    with schemas.on_connection(connection, _schema(connection.dialect.name)):
        _run_in_schema(connection)


def _run_in_schema(connection: Connection) -> None:
    # Each revision also creates only what is missing (`sqlsaver.migrate.missing`),
    # so one interrupted between two DDL statements completes when run again.
    commit = [_commit_revision] if dialects.commits_ddl(connection.dialect) else []
    # On a Galera cluster, the migration lock is a row that must outlive the
    # revisions (`galera.renew_lock`; nothing elsewhere).
    commit.append(lambda ctx, **_: ctx.connection is not None and renew_lock(ctx.connection))
    # Before Alembic makes it with a primary key name MySQL would ignore,
    # with a warning.
    create_version_table(connection)
    context.configure(
        connection=connection,
        on_version_apply=commit,
        target_metadata=target_metadata(connection.dialect.name),
        version_table_schema=schemas.of(connection),
        **OPTIONS,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        url = _url()
        metadata = target_metadata(make_url(url).get_backend_name())
        context.configure(
            url=url,
            literal_binds=True,
            target_metadata=metadata,
            version_table_schema=_schema(make_url(url).get_backend_name()),
            **OPTIONS,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = _url()
    if make_url(url).get_dialect().is_async:
        asyncio.run(_run_async(url))
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


main()
