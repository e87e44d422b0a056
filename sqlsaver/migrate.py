"""Alembic, programmatically, on a connection the caller already has.

sqlsaver's revisions live in ``migrations/`` (shipped inside the wheel as
``sqlsaver.migrations``) and record themselves in a private version table,
``sqlsaver_alembic_version``, so an application's own ``alembic_version``
is never read or written.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

VERSION_TABLE = "sqlsaver_alembic_version"


def migrations_dir() -> Path:
    """Where the Alembic environment of this installation lives."""
    return Path(str(resources.files("sqlsaver.migrations")))


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic `Config` for sqlsaver's revisions.

    With ``connection`` the migrations run on it, inside its transaction;
    otherwise on ``url`` (or ``-x url=...`` / ``SQLSAVER_URL``).
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Upgrade sqlsaver's tables on ``connection`` to ``revision``."""
    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str) -> None:
    """Downgrade sqlsaver's tables on ``connection`` to ``revision``."""
    command.downgrade(alembic_config(connection), revision)
