"""`SQLSaver`: the synchronous checkpointer."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from sqlalchemy import URL, Engine
from typing_extensions import Unpack

from sqlsaver import migrate, ops
from sqlsaver.base import SaverBase, SaverOptions, Sweep, check_prune
from sqlsaver.codec import Address
from sqlsaver.engines import pre_ping, sync_engine
from sqlsaver.execution.runner import SyncTarget, sync_runner

logger = logging.getLogger(__name__)


class SQLSaver(SaverBase):
    """A LangGraph checkpointer on SQLite, PostgreSQL or MySQL/MariaDB.

    Give it a SQLAlchemy URL (`from_url`), or the Engine, Connection or
    Session your application already has. With an Engine each operation is
    its own transaction; with a Connection or Session the saver joins the
    caller's transaction and never commits it.

    Its async methods work too (each runs in a worker thread), so one sync
    saver can serve `graph.invoke` and `graph.ainvoke` alike.

    Example:
        ```python
        from langgraph.graph import START, MessagesState, StateGraph
        from sqlsaver import SQLSaver

        builder = StateGraph(MessagesState)
        builder.add_node("reply", lambda state: {"messages": [("ai", "hello")]})
        builder.add_edge(START, "reply")

        with SQLSaver.from_url("sqlite:///checkpoints.db") as saver:
            saver.setup()
            graph = builder.compile(checkpointer=saver)
            graph.invoke({"messages": [("user", "hi")]}, {"configurable": {"thread_id": "1"}})
        ```
    """

    def __init__(self, bind: SyncTarget, **options: Unpack[SaverOptions]) -> None:
        """
        Args:
            bind: The Engine, Connection or Session to store checkpoints
                through.
            **options: ``serde``, ``shallow``, ``ttl``, ``clock``,
                ``check_schema``, ``schema`` (see `SaverOptions`).
        """
        super().__init__(**options)
        self._runner = sync_runner(bind, self._check_schema, self.schema)
        self._owned_engine: Engine | None = None
        self._sweeper: tuple[threading.Thread, threading.Event] | None = None

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        engine_kwargs: dict[str, Any] | None = None,
        **options: Unpack[SaverOptions],
    ) -> SQLSaver:
        """A saver on a new engine for ``url``, disposed by `close()` or when
        the saver is used as a context manager and the block ends.

        Args:
            url: Any sync SQLAlchemy URL: ``sqlite:///file.db``,
                ``postgresql+psycopg://user@host/db``,
                ``mysql+pymysql://user@host/db``.
            engine_kwargs: Extra `create_engine` arguments (pool size...).
            **options: ``serde``, ``shallow``, ``ttl``, ``clock``,
                ``check_schema``, ``schema`` (see `SaverOptions`).

        Example:
            ```python
            from sqlsaver import SQLSaver

            url = "postgresql+psycopg://postgres@localhost/app"
            with SQLSaver.from_url(url, engine_kwargs={"pool_size": 20}) as saver:
                saver.setup()
            ```
        """
        cls._checked_policies(options, url)  # before there is an engine to leave
        engine = sync_engine(url, engine_kwargs)
        saver = cls(engine, **options)
        saver._owned_engine = engine
        saver._runner.keep_connections(pre_ping(engine_kwargs))
        return saver

    def close(self) -> None:
        """Stop the TTL sweeper, and dispose of the engine `from_url` created
        (never one you passed in)."""
        self.stop_ttl_sweeper()
        self._runner.close()
        if self._owned_engine is not None:
            self._owned_engine.dispose()

    def __enter__(self) -> SQLSaver:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def setup(self) -> None:
        """Create or upgrade sqlsaver's tables (Alembic, to head)."""
        self._runner.migrate(migrate.setup)

    # -- reads ---------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the latest of its thread."""
        if self.policies.refreshes_on_read:  # the read moves the expiry on
            return self._runner.write(ops.get_tuple, self._opts, config)
        return self._runner.read(ops.get_tuple, self._opts, config)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first, fetched a page at a time.

        Args:
            config: Restricts to its thread (and to its ``checkpoint_ns``
                when that key is present, even as ``""``); None lists all.
            filter: Metadata keys and the values they must equal.
            before: Only checkpoints older than this one.
            limit: At most this many.
        """
        query: ops.ListQuery | None = ops.ListQuery.of(config, filter, before, limit)
        while query is not None:
            page, query = self._runner.read(ops.list_page, self._opts, query)
            yield from page

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """`DeltaChannel` history (see `BaseCheckpointSaver`), set-based."""
        return self._runner.read(ops.get_delta_channel_history, self._opts, config, channels)

    # -- writes --------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and its changed channel values atomically."""
        rows_of = partial(ops.put_rows, self._opts, config, checkpoint, metadata, new_versions)
        self._runner.store(self.policies, rows_of, ops.store, self._opts)
        return Address.of(config).config(checkpoint["id"])

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes atomically."""
        rows_of = partial(ops.write_rows, self._opts, config, writes, task_id, task_path)
        self._runner.store(self.policies, rows_of, ops.store, self._opts)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, write and value of a thread."""
        self._runner.write(ops.delete_threads, self._opts, [str(thread_id)])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (with writes and values) of these runs.

        A checkpoint belongs to the run whose id is in its metadata, which
        LangGraph fills from ``config["configurable"]["run_id"]``; a
        top-level ``config["run_id"]`` is not stored by LangGraph (for any
        saver), so runs started with only that are not found."""
        self._runner.write(ops.delete_for_runs, self._opts, [str(r) for r in run_ids])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a whole thread, every namespace and checkpoint id included."""
        self._runner.write(
            ops.copy_thread, self._opts, str(source_thread_id), str(target_thread_id)
        )

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Shrink threads: ``"keep_latest"`` keeps each namespace's latest
        checkpoint (and what `DeltaChannel`s need to rebuild it), one
        transaction per thread; ``"delete"`` deletes them whole."""
        threads = check_prune(thread_ids, strategy)
        if strategy == "delete":
            self._runner.write(ops.delete_threads, self._opts, threads)
            return
        for thread_id in threads:
            self._runner.write(ops.prune_keep_latest, self._opts, thread_id)

    # -- TTL -----------------------------------------------------------------

    def set_thread_ttl(self, thread_id: str, minutes: float | None | str) -> None:
        """Give one thread its own TTL: ``minutes`` after each write, ``None``
        to never expire, or ``"default"`` for the saver's ``default_ttl``."""
        self._ttl()
        self._runner.write(ops.set_thread_ttl, self._opts, str(thread_id), minutes)

    def sweep_ttl(
        self, limit: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Delete (or, with ``strategy="keep_latest"``, prune) up to ``limit``
        expired threads (default ``sweep_limit``), 100 per transaction.
        Several sweepers may run at once; none handles a thread twice.
        Returns how many threads it handled; ``progress`` gets the running
        total after each transaction."""
        ttl = self._ttl()
        sweep = Sweep(limit or ttl.sweep_limit, progress)
        for size in sweep:
            sweep.done(self._runner.write(ops.sweep_expired, self._opts, size, ttl.strategy))
        return sweep.handled

    def start_ttl_sweeper(self, interval_minutes: float | None = None) -> threading.Thread:
        """Sweep now and then every ``interval_minutes`` (default
        ``sweep_interval_minutes``) in a background thread, until
        `stop_ttl_sweeper` or `close`."""
        interval = self._sweep_interval(interval_minutes)
        if self._sweeper is not None:
            raise RuntimeError("the TTL sweeper is already running")
        stop = threading.Event()

        def sweep_until_stopped() -> None:
            while True:
                try:
                    self.sweep_ttl()
                except Exception:  # a failed sweep must not end the sweeper
                    logger.exception("sqlsaver TTL sweep failed; retrying next interval")
                if stop.wait(interval):
                    return

        thread = threading.Thread(target=sweep_until_stopped, name="sqlsaver-ttl", daemon=True)
        self._sweeper = (thread, stop)
        thread.start()
        return thread

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the background sweeper (after the sweep it may be in);
        whether it has stopped within ``timeout`` seconds."""
        if self._sweeper is None:
            return True
        thread, stop = self._sweeper
        stop.set()
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._sweeper = None
        return True

    # -- async twins: the sync methods in a worker thread ---------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        query: ops.ListQuery | None = ops.ListQuery.of(config, filter, before, limit)
        while query is not None:
            page, query = await asyncio.to_thread(
                self._runner.read, ops.list_page, self._opts, query
            )
            for item in page:
                yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return await asyncio.to_thread(
            self.get_delta_channel_history, config=config, channels=channels
        )

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def aset_thread_ttl(self, thread_id: str, minutes: float | None | str) -> None:
        await asyncio.to_thread(self.set_thread_ttl, thread_id, minutes)

    async def asweep_ttl(self, limit: int | None = None) -> int:
        return await asyncio.to_thread(self.sweep_ttl, limit)
