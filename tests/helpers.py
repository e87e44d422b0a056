"""Helpers the test modules share: driving a saver or graph sync or async."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langgraph.types import Interrupt


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
