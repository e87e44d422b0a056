"""Helpers the test modules share: driving a saver or graph sync or async;
scratch databases on the test servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import REQUIRE_ALL, _reachable
from langgraph.types import Interrupt
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.pool import NullPool


async def call(aio: bool, obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """``obj.name(...)``, or ``await obj.aname(...)`` when async; iterators
    (``stream``, ``get_state_history``, ``list``) come back as lists."""
    if not aio:
        out = getattr(obj, name)(*args, **kwargs)
        return list(out) if isinstance(out, Iterator) else out
    out = getattr(obj, "a" + name)(*args, **kwargs)
    if hasattr(out, "__aiter__"):
        return [item async for item in out]
    return await out


# The server's id of a driver's connection, to end it from another one.
SESSION_ID = {
    "psycopg": lambda driver_conn: driver_conn.info.backend_pid,
    "asyncpg": lambda driver_conn: driver_conn.get_server_pid(),
    "pymysql": lambda driver_conn: driver_conn.thread_id(),
    "asyncmy": lambda driver_conn: driver_conn.thread_id(),
}


def norm(value: Any) -> Any:
    """A value with the run-specific parts (interrupt ids) left out."""
    if isinstance(value, Interrupt):
        return ("interrupt", norm(value.value))
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(norm(v) for v in value)
    return value


def require_server(name: str, url: str) -> None:
    """Fail (under CI: every backend must run) or skip when the server of
    ``url`` cannot be reached."""
    if not _reachable(url):
        message = f"{name} is not reachable at {make_url(url).host}:{make_url(url).port}"
        if REQUIRE_ALL:
            pytest.fail(f"{message}; CI requires every backend to run", pytrace=False)
        pytest.skip(message)


@contextmanager
def server_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database ``<prefix>_<random>`` on the PostgreSQL or
    MySQL server of ``server_url``, dropped afterwards (connections left
    on it ended first): its URL, with the driver of ``server_url``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:  # connections a failed test (or a killed copy) left would block the DROP
                ids = conn.execute(
                    text("SELECT id FROM information_schema.processlist WHERE db = :db"),
                    {"db": name},
                ).scalars()
                for id_ in list(ids):
                    conn.execute(text(f"KILL {int(id_)}"))
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()
