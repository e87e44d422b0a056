"""What `SQLSaver` and `AsyncSQLSaver` share: the pieces of the saver
contract that do no I/O, and turning a URL into an engine."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlsaver import dialects, ops

PRUNE_STRATEGIES = ("keep_latest", "delete")

# A URL for the other kind of saver, and the driver to use instead.
_SYNC_FOR = {
    "sqlite": "sqlite://",
    "postgresql": "postgresql+psycopg://",
    "mysql": "mysql+pymysql://",
}
_ASYNC_FOR = {
    "sqlite": "sqlite+aiosqlite://",
    "postgresql": "postgresql+asyncpg:// (or postgresql+psycopg://)",
    "mysql": "mysql+asyncmy://",
}


class SaverBase(BaseCheckpointSaver[str]):
    """Shared by both savers; not used directly."""

    def __init__(self, *, serde: SerializerProtocol | None = None) -> None:
        super().__init__(serde=serde)

    @property
    def _opts(self) -> ops.Options:
        # Built on demand: `with_allowlist` copies the saver with a new serde.
        return ops.Options(serde=self.serde)

    def get_next_version(self, current: str | int | None, channel: None) -> str:
        """The next channel version, in the format of LangGraph's own savers:
        a zero-padded counter (so versions sort as strings) and a random
        suffix (so two forks writing one channel do not collide)."""
        if current is None:
            counter = 0
        elif isinstance(current, int):
            counter = current
        else:
            counter = int(current.split(".")[0])
        return f"{counter + 1:032}.{random.random():016}"


def check_prune(thread_ids: Sequence[str], strategy: str) -> list[str]:
    """Validate `prune`'s arguments; the thread ids as a list."""
    if isinstance(thread_ids, str):
        raise TypeError("prune takes a sequence of thread ids, not one string: prune([thread_id])")
    if strategy not in PRUNE_STRATEGIES:
        raise ValueError(f"unknown prune strategy {strategy!r}; use one of {PRUNE_STRATEGIES}")
    return [str(t) for t in thread_ids]


def parse_url(url: str | URL) -> URL:
    """A SQLAlchemy URL, with a clear error for one sqlsaver cannot use."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError) as error:
        raise ValueError(
            f"cannot use database URL {str(url)!r}: {error}. sqlsaver takes SQLAlchemy URLs "
            "for SQLite (sqlite:///file.db, sqlite+aiosqlite:///file.db), PostgreSQL "
            "(postgresql+psycopg://, postgresql+asyncpg://) and MySQL/MariaDB "
            "(mysql+pymysql://, mysql+asyncmy://)"
        ) from error
    return parsed


def _options(url: URL, engine_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    options = dialects.engine_options(url)
    for key, value in (engine_kwargs or {}).items():
        if key == "connect_args":
            value = {**options.get("connect_args", {}), **value}
        options[key] = value
    return options


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    return "mysql" if backend in dialects.MYSQL else backend


def _driver_missing(url: URL, error: ImportError) -> ValueError:
    return ValueError(
        f"the driver for {url.drivername!r} is not installed ({error}): install it, or "
        "sqlsaver's extra for the database: pip install 'sqlsaver[postgres]' "
        "(psycopg, asyncpg), 'sqlsaver[mysql]' (pymysql, asyncmy), 'sqlsaver[sqlite]' (aiosqlite)"
    )


def sync_engine(url: str | URL, engine_kwargs: dict[str, Any] | None) -> Engine:
    """An engine for `SQLSaver.from_url`, configured for checkpointing."""
    parsed = parse_url(url)
    if parsed.get_dialect().is_async:
        instead = _SYNC_FOR.get(_backend(parsed), "its sync driver")
        raise ValueError(
            f"{parsed.drivername!r} is an async driver: use AsyncSQLSaver.from_url for it, "
            f"or give SQLSaver a sync URL such as {instead}"
        )
    try:
        engine = create_engine(parsed, **_options(parsed, engine_kwargs))
    except ImportError as error:
        raise _driver_missing(parsed, error) from error
    dialects.configure_engine(engine)
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
        instead = _ASYNC_FOR.get(_backend(parsed), "its async driver")
        raise ValueError(
            f"{parsed.drivername!r} is not an async driver: use SQLSaver.from_url for it, "
            f"or give AsyncSQLSaver an async URL such as {instead}"
        ) from error
    dialects.configure_engine(engine.sync_engine)
    return engine
