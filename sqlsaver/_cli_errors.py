"""The CLI's errors in words a user can act on: what is wrong, and what to do.

Errors are recognized by their classes and by the codes the database sends
(PostgreSQL's SQLSTATE, MySQL's error numbers); only where a driver gives no
code (psycopg's failures to connect, which come from libpq as text) by the
message. Nothing here shows a URL's password.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sqlalchemy import URL
from sqlalchemy.exc import DBAPIError

from sqlsaver import migrate

HISTORY = "`python -m sqlsaver history`"


class CLIError(Exception):
    """An error the CLI reports in one or two lines (its message), exit 2."""


# -- SQLite files ---------------------------------------------------------------


def sqlite_file(url: URL) -> Path | None:
    """The absolute path of a SQLite URL's database file; None for anything
    else (another database, memory, a ``file:`` URI)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if "uri" in url.query or url.database.startswith("file:"):
        return None
    return Path(os.path.abspath(url.database))


def require_sqlite_file(url: URL) -> None:
    """For commands that only read: refuse a SQLite file that does not exist,
    which SQLite would otherwise create, empty."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise CLIError(no_sqlite_file(path))


def no_sqlite_file(path: Path) -> str:
    return (
        f"no SQLite database at {path}: check the path in --url "
        "(`python -m sqlsaver upgrade` creates one)"
    )


def require_sqlite_folder(url: URL, option: str = "--url") -> None:
    """For commands that may create the file: its folder must exist (SQLite
    says only "unable to open database file", naming no path). ``option``:
    the one that gave the URL, as in `explain`."""
    path = sqlite_file(url)
    if path is not None and not path.parent.is_dir():
        raise CLIError(
            f"no folder {path.parent} for the SQLite file {path}: "
            f"create it first (mkdir -p {path.parent}), or fix the path in {option}"
        )


def reach(url: URL, option: str) -> None:
    """Connect to a server's ``url`` once (a sync driver for an async one),
    and explain a failure with this URL: for commands with two databases,
    where `main` could not tell which one failed. SQLite is not opened (it
    would create the file). ``option``: the one that gave the URL."""
    from sqlsaver import engines

    if sqlite_file(url) is not None or url.get_backend_name() == "sqlite":
        return
    sync = engines.sync_twin(url) if url.get_dialect().is_async else url
    engine = engines.sync_engine(sync, None)
    try:
        engine.connect().close()
    except Exception as error:
        message = explain(error, url, option)
        if message is None:
            raise
        raise CLIError(message) from error
    finally:
        engine.dispose()


# -- the database's errors ------------------------------------------------------

_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}

# Kinds of failure, and the words for each (after "<database> at <host>").
REFUSED = "refused"
NO_HOST = "no_host"
LOGIN = "login"
NO_DATABASE = "no_database"

# PostgreSQL's SQLSTATEs: invalid_password, invalid_authorization_specification
# (no such role, or pg_hba.conf has no entry for it), invalid_catalog_name.
_PG_CODES = {"28P01": LOGIN, "28000": LOGIN, "3D000": NO_DATABASE}
# MySQL's error numbers: ER_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR,
# ER_BAD_DB_ERROR, CR_CONN_HOST_ERROR (refused, or a host it cannot
# resolve), CR_UNKNOWN_HOST.
_MYSQL_CODES = {1045: LOGIN, 1044: LOGIN, 1049: NO_DATABASE, 2003: REFUSED, 2005: NO_HOST}
# psycopg's failures to connect carry no SQLSTATE (libpq reports them as
# text): its words for each kind, as libpq writes them.
_LIBPQ_WORDS = [
    ("password authentication failed", LOGIN),
    ("no pg_hba.conf entry", LOGIN),
    ("role ", LOGIN),  # role "x" does not exist
    ("database ", NO_DATABASE),  # database "x" does not exist
    ("failed to resolve host", NO_HOST),
    ("could not translate host name", NO_HOST),
    ("connection refused", REFUSED),
]


def _kind(error: BaseException) -> str | None:
    if isinstance(error, socket.gaierror):  # asyncpg's, not wrapped
        return NO_HOST
    if isinstance(error, ConnectionRefusedError):
        return REFUSED
    orig = error.orig if isinstance(error, DBAPIError) else None
    if orig is None:
        return None
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_CODES:
        return _PG_CODES[code]
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _MYSQL_CODES:
        kind = _MYSQL_CODES[args[0]]
        # 2003 is also MySQL's error for a host name it cannot resolve.
        cause = orig.__cause__
        if kind == REFUSED and (
            isinstance(cause, socket.gaierror) or "Name or service not known" in str(args[-1])
        ):
            return NO_HOST
        return kind
    if type(orig).__module__.startswith("psycopg") and code is None:
        text = str(orig).lower()
        for words, kind in _LIBPQ_WORDS:
            if words in text and (kind != NO_DATABASE or "does not exist" in text):
                return kind
    return None


def _server_says(error: BaseException) -> str:
    """The database's own words, on one line, without the driver's prefix."""
    orig = error.orig if isinstance(error, DBAPIError) else error
    args = getattr(orig, "args", ())
    text = str(args[-1]) if args and isinstance(args[0], int) else str(orig)
    text = text.split("FATAL:", 1)[-1]
    return " ".join(text.split()).strip()


def explain(error: BaseException, url: URL | None, option: str = "--url") -> str | None:
    """The CLI's message for ``error`` on the database of ``url``, which
    ``option`` gave; None for an error it does not know (a bug: its
    traceback is shown)."""
    if isinstance(error, (CLIError, ValueError, migrate.SchemaError, TimeoutError)):
        return str(error) or type(error).__name__
    from alembic.script.revision import ResolutionError
    from alembic.util import CommandError

    if isinstance(error, CommandError) and isinstance(error.__cause__, ResolutionError):
        return f"unknown revision {error.__cause__.argument!r}; {HISTORY} lists them"
    if isinstance(error, CommandError):
        return str(error)
    if url is None or not isinstance(error, (DBAPIError, OSError)):
        return None
    path = sqlite_file(url)
    if path is not None:
        if not isinstance(error, DBAPIError):
            return None  # not SQLite's
        return (
            f"cannot use the SQLite file {path}: {_server_says(error)}. "
            "Check that it is a SQLite database and that you may write to it and its folder."
        )
    backend = url.get_backend_name()
    name = _NAMES.get(backend, backend)
    where = f"{name} at {url.host or 'localhost'}:{url.port or _PORTS.get(backend, '')}"
    kind = _kind(error)
    if kind == REFUSED:
        return (
            f"cannot connect to {where}: connection refused. Is the server running? "
            f"Check the host and port in {option}."
        )
    if kind == NO_HOST:
        return f"cannot connect to {where}: no such host. Check the host in {option}."
    if kind == LOGIN:
        return (
            f"{where} refused to log in user {url.username!r}: {_server_says(error)}. "
            f"Check the user and password in {option}."
        )
    if kind == NO_DATABASE:
        return (
            f"no database {url.database!r} on {where}: create it first "
            f"(CREATE DATABASE {url.database}), or fix the database name in {option}."
        )
    return f"{where}: {_server_says(error)} (run with --verbose for the traceback)"
