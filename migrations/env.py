"""Alembic environment of sqlsaver.

Runs on the connection handed over in ``config.attributes["connection"]``
(sqlsaver's own `setup()` and `sqlsaver.migrate`), or on a URL from
``-x url=...``, the ``SQLSAVER_URL`` environment variable or
``sqlalchemy.url``, sync or async driver alike. Offline (``--sql``), it
prints the DDL for that URL's dialect without connecting.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, make_url, pool
from sqlalchemy.ext.asyncio import create_async_engine

from sqlsaver.migrate import VERSION_TABLE
from sqlsaver.models import Base

config = context.config
# Logging as alembic.ini sets it ("Running upgrade ..." lines), when run from
# it; sqlsaver's own calls (setup(), the CLI) leave the app's logging alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name)
OPTIONS = {
    "target_metadata": Base.metadata,
    "version_table": VERSION_TABLE,
    # Only sqlsaver's tables are ever compared, created or dropped.
    "include_name": lambda name, type_, _parent: type_ != "table" or name.startswith("sqlsaver_"),
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


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **OPTIONS)
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
        context.configure(url=_url(), literal_binds=True, **OPTIONS)
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
