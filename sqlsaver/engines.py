"""Engines sqlsaver makes itself (`SQLSaver.from_url`,
`AsyncSQLSaver.from_url`): from a URL to an Engine or AsyncEngine, with
the settings that suit a checkpointer on each database.
"""

from __future__ import annotations

import json
import json.scanner
import re
from typing import Any, cast

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from sqlsaver import galera
from sqlsaver.dialects import MYSQL

# MySQL's client capability flags (the protocol's, as PyMySQL's CLIENT has them).
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_MULTI_STATEMENTS = 1 << 16

# sqlsaver's drivers for each database, to name in messages: the sync URL,
# the async URL, and the extra that installs them. (SQLAlchemy's defaults
# for a URL that names none, mysql://: mysqlclient; postgresql://: psycopg2
# before SQLAlchemy 2.1, are not sqlsaver's, nor installed by its extras.)
_DRIVERS = {
    "postgresql": ("postgresql+psycopg://", "postgresql+asyncpg://", "postgres"),
    "mysql": ("mysql+pymysql://", "mysql+asyncmy://", "mysql"),
    "sqlite": ("sqlite://", "sqlite+aiosqlite://", "sqlite"),
}


# Connections a saver's own engine keeps (`engine_options`).
POOL_SIZE = 10


def engine_options(url: URL) -> dict[str, Any]:
    """`create_engine` keyword arguments that suit a checkpointer."""
    # No pool_pre_ping (a round trip per operation): a dead connection fails
    # its transaction, the pool drops it, and the saver runs it again.
    options: dict[str, Any] = {}
    # The most recently used connection first: its statements are already
    # prepared (psycopg prepares a statement on its fifth run on a
    # connection; asyncpg's cache is per connection), and the connections
    # a quiet app does not need sit idle until the server closes them.
    options["pool_use_lifo"] = True
    # A fixed pool. SQLAlchemy's default lets 10 connections beyond the 5 it
    # keeps open for a burst, and closes them when given back: concurrent
    # graphs would log in (and have statements prepared) anew all the time.
    # Waiting a moment for one of the pool's is cheaper.
    options["pool_size"] = POOL_SIZE
    options["max_overflow"] = 0
    options["json_deserializer"] = json_loads
    if url.get_backend_name() == "sqlite":
        # Other writers wait for the lock instead of failing at once.
        options["connect_args"] = {"timeout": 30}
        # The driver begins no transaction of its own (pysqlite would, before
        # any INSERT, as DEFERRED): reads and one-statement writes need none,
        # and the other writes begin theirs as BEGIN IMMEDIATE (`atomic`).
        options["isolation_level"] = "AUTOCOMMIT"
        if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
            # One in-memory database shared by every thread of this engine.
            options["poolclass"] = StaticPool
            for pool_option in ("pool_use_lifo", "pool_size", "max_overflow"):
                del options[pool_option]
            options["connect_args"]["check_same_thread"] = False
            # Nothing to reset on return (AUTOCOMMIT; every operation ends
            # the transactions it begins), and a ROLLBACK there would end
            # another thread's write on the one shared connection.
            options["pool_reset_on_return"] = None
    if url.get_backend_name() in MYSQL:
        options["pool_recycle"] = 3600  # below MySQL's wait_timeout
        if url.get_driver_name() == "pymysql":
            # A write of two inserts in one round trip (`runs_scripts`);
            # FOUND_ROWS is SQLAlchemy's own flag, which this replaces.
            flags = CLIENT_FOUND_ROWS | CLIENT_MULTI_STATEMENTS
            options["connect_args"] = {"client_flag": flags}
        # AUTOCOMMIT, for the round trips: otherwise InnoDB opens a
        # transaction at a read's SELECT, which must be rolled back (one
        # more round trip) lest the connection's next user read an old
        # snapshot, and SQLAlchemy sends a ROLLBACK after each COMMIT too
        # (PyMySQL and asyncmy send whatever they are asked). The writes of
        # more than one statement open a transaction themselves (`atomic`);
        # every one ends it, so there is nothing to reset on return.
        options["isolation_level"] = "AUTOCOMMIT"
        options["pool_reset_on_return"] = None
    if url.get_backend_name() == "postgresql":
        options["pool_recycle"] = 1800  # before proxies and load balancers drop idle ones
        # Reads and one-statement writes need no transaction (`read_options`);
        # the writes that do open one themselves (`atomic`). Set on the
        # engine, not switched on each checkout and back on each return.
        options["isolation_level"] = "AUTOCOMMIT"
    return options


# The C scanner of a default decoder (typeshed types its argument oddly).
_SCAN_JSON = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))


def json_loads(document: str | bytes) -> Any:
    """`json.loads` for the JSON columns a read gives back (such as the
    channel versions of each checkpoint), which `engine_options` hands the
    dialect: a document as the database writes it (UTF-8, no space around
    it) is scanned in one C call, without `json.loads`'s ~90 bytecodes of
    Python (a tenth of the Python that reads a checkpoint on SQLite).
    Anything else, and any error, takes `json.loads` itself."""
    try:
        text = document if isinstance(document, str) else bytes(document).decode()
        value, end = _SCAN_JSON(text, 0)
        if end == len(text):
            return value
    except (StopIteration, ValueError):  # UnicodeDecodeError, JSONDecodeError
        pass
    return json.loads(document)


# The sync driver of each async one sqlsaver knows (`sync_twin`).
_SYNC_TWIN = {
    "aiosqlite": "pysqlite",
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "asyncmy": "pymysql",
    "aiomysql": "pymysql",
}


def sync_twin(url: URL) -> URL:
    """The URL of the same database through a sync driver, for work that
    runs on threads (a copy): aiosqlite's is sqlite3, asyncpg's psycopg,
    asyncmy's and aiomysql's PyMySQL."""
    driver = _SYNC_TWIN.get(url.get_driver_name())
    if driver is None:
        raise ValueError(f"no sync driver known for {_shown(url)}: give a sync URL instead")
    return url.set(drivername=f"{url.get_backend_name()}+{driver}")


def threaded_sync_url(url: URL) -> URL | None:
    """For an async URL whose driver is a thread around a sync one
    (aiosqlite), the sync URL that `AsyncSQLSaver` runs in a worker thread
    instead; None for truly async drivers."""
    if url.get_backend_name() == "sqlite" and url.get_driver_name() == "aiosqlite":
        return sync_twin(url)
    return None


# The protocol's SERVER_STATUS_IN_TRANS bit, in the status MySQL sends with


def configure_engine(engine: Engine) -> None:
    """Connection-level settings for an engine sqlsaver created.

    SQLite: write-ahead logging. (Its engines are AUTOCOMMIT, see
    `engine_options`: sqlsaver begins its write transactions itself, as
    ``BEGIN IMMEDIATE``, so that concurrent writers queue on the busy
    timeout instead of failing with "database is locked" when they upgrade
    a read lock, the official saver's failure.)

    MySQL: strict mode, so a key too long for its column is an error rather
    than silently truncated into another thread's key. On a Galera node,
    reads that wait for the cluster's writes (`galera.wait_for_writes`).
    """
    if engine.dialect.name in MYSQL:

        @event.listens_for(engine, "connect")
        def _strict(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')")
            galera.wait_for_writes(cursor, record.info)
            cursor.close()

    if engine.dialect.name == "postgresql":
        _watch_for_pooler(engine)
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
            except Exception as error:  # the driver's OperationalError
                # Switching to WAL needs the database to itself, and does not
                # wait for a writer: go on, and let a later connection (or the
                # writer's) switch. WAL is speed, not correctness.
                if "locked" not in str(error):
                    raise
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


# -- transaction-mode poolers ---------------------------------------------
#
# Behind a pooler in transaction mode (PgBouncer before 1.21, or without
# max_prepared_statements; pgcat, Odyssey, Supavisor, ...) each transaction, or
# each statement on an AUTOCOMMIT engine such as sqlsaver's, may run on
# another server session, shared with other clients. The named statements
# drivers prepare (psycopg "_pg3_<n>" on a statement's fifth run, asyncpg
# "__asyncpg_stmt_<n>__" at once) are then missing there ("does not exist"),
# or another client's of the same name ("already exists"; or, with as many
# parameters, run in place of this one's). Measured through PgBouncer
# 1.18 (server_round_robin = 1), 4 clients x 200 graph turns: 797 of 800
# failed on psycopg and 799 of 800 on asyncpg; with the settings below,
# none failed and no statement was left on the server.
#
# The settings that prepare no named statement: psycopg's prepare_threshold
# None (each statement parsed and planned anew, in its one round trip); asyncpg's
# statement_cache_size 0 (unnamed statements, which SQLAlchemy's adapter keeps
# described and asyncpg parses anew in the round trip that runs them). Not
# by default: on the direct server they cost 1.5-2x on reads, as planning
# sqlsaver's statements takes longer than their round trip (benchmarks/bench.py,
# PostgreSQL 15, the mean of two runs' medians, prepared -> not prepared:
# psycopg get_tuple by id 0.57 -> 1.16 ms, list(filter) 0.72 -> 1.47 ms, put
# 0.59 -> 0.77 ms; asyncpg get_tuple by id 0.69 -> 1.29 ms, put 0.80 -> 0.84
# ms; two runs of the same code differed by up to 0.13 ms there). So an
# engine of sqlsaver's finds out, at its first connection, whether a pooler
# stands between it and the server (`_behind_pooler`), and only then takes them.
_UNNAMED_STATEMENTS: dict[str, dict[str, Any]] = {
    "psycopg": {"prepare_threshold": None},
    "asyncpg": {"statement_cache_size": 0},
}


def _watch_for_pooler(engine: Engine) -> None:
    """Have an engine's connections prepare no named statements where its
    first connection finds a pooler (see above). Connect arguments of the
    caller's that decide it (``prepare_threshold``, ``statement_cache_size``)
    are kept, and nothing is asked."""
    unnamed = _UNNAMED_STATEMENTS.get(engine.dialect.driver)
    if unnamed is None:
        return
    found: list[bool] = []  # whether a pooler was found, once known

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        if unnamed.keys() & cparams.keys():
            return None
        if found:
            if found[0]:
                cparams.update(unnamed)
            return None  # the dialect connects, as usual
        conn = dialect.connect(*cargs, **cparams)
        try:
            pooled = _behind_pooler(conn, dialect.driver)
        except BaseException:
            conn.close()
            raise
        found[:] = [pooled]
        if not pooled:
            return conn
        if dialect.driver == "psycopg":  # a setting of the open connection
            getattr(conn, "driver_connection", conn).prepare_threshold = None
            return conn
        conn.close()  # asyncpg's is one of its connect arguments
        cparams.update(unnamed)
        return dialect.connect(*cargs, **cparams)


def _behind_pooler(conn: Any, driver: str) -> bool:
    """Whether a new DBAPI connection reaches PostgreSQL through a pooler:
    whether the process id of the cancel key it got at startup (the
    protocol's BackendKeyData) is not that of the server process that
    serves it. A pooler answers the startup itself, with a key of its own
    (its clients' statements run on any of its server sessions): PgBouncer's
    is random. A plain proxy (a load balancer, Docker's port mapping) passes
    the server's on, and prepared statements are safe behind it. One round
    trip, at an engine's first connection."""
    query = "SELECT pg_backend_pid()"
    if driver == "asyncpg":

        async def pids(raw: Any) -> tuple[int, int]:
            # Unnamed: it leaves nothing on the server session.
            statement = await raw.prepare(query, name="")
            return await statement.fetchval(), raw.get_server_pid()

        served, keyed = conn.run_async(pids)
    else:  # psycopg: a statement's first run is never prepared
        cursor = conn.cursor()
        cursor.execute(query)
        served = cursor.fetchone()[0]
        cursor.close()
        conn.rollback()  # before the dialect sets AUTOCOMMIT, it began a transaction
        keyed = getattr(conn, "driver_connection", conn).info.backend_pid
    return bool(served != keyed)


_ALL_DRIVERS = (
    "sqlsaver takes SQLAlchemy URLs for SQLite (sqlite:///file.db, sqlite+aiosqlite:///file.db), "
    "PostgreSQL (postgresql+psycopg://, postgresql+asyncpg://) and MySQL/MariaDB "
    "(mysql+pymysql://, mysql+asyncmy://)"
)


def _shown(url: str | URL) -> str:
    """A URL for a message, without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not even a URL: hide what may be a password
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", str(url))


def parse_url(url: str | URL) -> URL:
    """A SQLAlchemy URL, with a clear error for one sqlsaver cannot use."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ValueError(
            f"cannot use database URL {_shown(url)!r}: {error}. {_ALL_DRIVERS}"
        ) from error
    if parsed.get_backend_name() == "postgres":
        # The scheme of Heroku-style DATABASE_URLs, which SQLAlchemy dropped.
        sync, aio, _ = _DRIVERS["postgresql"]
        raise ValueError(
            f"cannot use database URL {_shown(parsed)!r}: SQLAlchemy has no 'postgres://' "
            f"scheme (a common DATABASE_URL form): write {sync} (SQLSaver or AsyncSQLSaver) "
            f"or {aio} (AsyncSQLSaver), with the rest of the URL as it is"
        )
    try:
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError) as error:
        raise ValueError(
            f"cannot use database URL {_shown(parsed)!r}: {error}. {_ALL_DRIVERS}"
        ) from error
    return parsed


def _options(url: URL, engine_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    options = engine_options(url)
    for key, value in (engine_kwargs or {}).items():
        if key == "connect_args":
            value = {**options.get("connect_args", {}), **value}
        options[key] = value
    return options


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    return "mysql" if backend in MYSQL else backend


def _driver_missing(url: URL, error: ImportError) -> ValueError:
    backend = _backend(url)
    if backend in _DRIVERS and "+" not in url.drivername:
        sync, aio, extra = _DRIVERS[backend]
        return ValueError(
            f"'{url.drivername}://' asks for SQLAlchemy's default driver for it, which is not "
            f"installed ({error}): name sqlsaver's in the URL instead, {sync} for SQLSaver "
            f"or {aio} for AsyncSQLSaver (pip install 'sqlsaver[{extra}]')"
        )
    extra = _DRIVERS[backend][2] if backend in _DRIVERS else "all"
    return ValueError(
        f"the driver for {url.drivername!r} is not installed ({error}): install it, or "
        f"use the drivers of sqlsaver's extra: pip install 'sqlsaver[{extra}]'"
    )


def pre_ping(engine_kwargs: dict[str, Any] | None) -> bool:
    """Whether the caller asked for a ping at each checkout from the pool."""
    return bool((engine_kwargs or {}).get("pool_pre_ping"))


def sync_engine(url: str | URL, engine_kwargs: dict[str, Any] | None) -> Engine:
    """An engine for `SQLSaver.from_url`, configured for checkpointing."""
    parsed = parse_url(url)
    if parsed.get_dialect().is_async:
        instead = _DRIVERS.get(_backend(parsed), ("its sync driver",))[0]
        raise ValueError(
            f"{parsed.drivername!r} is an async driver: use AsyncSQLSaver.from_url for it, "
            f"or give SQLSaver a sync URL such as {instead}"
        )
    try:
        engine = create_engine(parsed, **_options(parsed, engine_kwargs))
    except ImportError as error:
        raise _driver_missing(parsed, error) from error
    configure_engine(engine)
    return engine


def async_engine(url: str | URL, engine_kwargs: dict[str, Any] | None) -> AsyncEngine:
    """An async engine for `AsyncSQLSaver.from_url`, configured alike."""
    parsed = parse_url(url)
    try:
        engine = create_async_engine(parsed, **_options(parsed, engine_kwargs))
    except ImportError as error:
        raise _driver_missing(parsed, error) from error
    except Exception as error:  # sqlalchemy raises InvalidRequestError for sync drivers
        if "async" not in str(error):
            raise
        instead = _DRIVERS.get(_backend(parsed), ("", "its async driver"))[1]
        if _backend(parsed) == "postgresql":  # psycopg is both
            instead += " (or postgresql+psycopg://)"
        raise ValueError(
            f"{parsed.drivername!r} is not an async driver: use SQLSaver.from_url for it, "
            f"or give AsyncSQLSaver an async URL such as {instead}"
        ) from error
    configure_engine(engine.sync_engine)
    return engine
