"""`AsyncSQLSaver`: the asyncio checkpointer.

It runs the very operations `SQLSaver` runs (`sqlsaver.ops`), by the same
runner, in a greenlet (`execution.runner.AsyncRunner`): the async driver
does the I/O, and no SQL, row handling or retry is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    DeltaChannelHistory,
)
from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import Unpack

from sqlsaver import engines, migrate, ops
from sqlsaver.base import SaverBase, SaverOptions, Sweep, check_prune
from sqlsaver.codec import Address
from sqlsaver.execution.runner import AsyncRunner, AsyncTarget, sync_runner

T = TypeVar("T")
logger = logging.getLogger(__name__)


class AsyncSQLSaver(SaverBase):
    """The asyncio twin of `SQLSaver`, for `graph.ainvoke` / `astream`.

    Give it an async SQLAlchemy URL (`from_url`), or the AsyncEngine,
    AsyncConnection or AsyncSession your application already has.

    Its sync methods work from other threads while its event loop runs
    (LangGraph calls them for `graph.get_state` in sync code); on the event
    loop itself they raise `asyncio.InvalidStateError`, as blocking the loop
    would deadlock it.

    Example:
        ```python
        import asyncio

        from langgraph.graph import START, MessagesState, StateGraph
        from sqlsaver import AsyncSQLSaver

        builder = StateGraph(MessagesState)
        builder.add_node("reply", lambda state: {"messages": [("ai", "hello")]})
        builder.add_edge(START, "reply")


        async def main() -> None:
            url = "postgresql+asyncpg://postgres@localhost/app"
            async with AsyncSQLSaver.from_url(url) as saver:
                await saver.setup()
                graph = builder.compile(checkpointer=saver)
                config = {"configurable": {"thread_id": "1"}}
                await graph.ainvoke({"messages": [("user", "hi")]}, config)


        asyncio.run(main())
        ```
    """

    def __init__(self, bind: AsyncTarget, **options: Unpack[SaverOptions]) -> None:
        """
        Args:
            bind: The AsyncEngine, AsyncConnection or AsyncSession to store
                checkpoints through.
            **options: ``serde``, ``shallow``, ``ttl``, ``clock``,
                ``check_schema``, ``schema`` (see `SaverOptions`).
        """
        super().__init__(**options)
        self._runner = AsyncRunner.of(bind, self._check_schema, self.schema)
        self._owned_engine: AsyncEngine | None = None
        self._threaded_engine: Engine | None = None
        self._sweeper: tuple[asyncio.Task[None], asyncio.Event] | None = None
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None  # taken on first use in `async with` / `setup()`

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        engine_kwargs: dict[str, Any] | None = None,
        **options: Unpack[SaverOptions],
    ) -> AsyncSQLSaver:
        """A saver on a new async engine for ``url``; ``async with`` (or
        `aclose()`) disposes of it.

        Args:
            url: Any async SQLAlchemy URL: ``sqlite+aiosqlite:///file.db``,
                ``postgresql+asyncpg://user@host/db``,
                ``postgresql+psycopg://user@host/db``,
                ``mysql+asyncmy://user@host/db``.
            engine_kwargs: Extra `create_async_engine` arguments.
            **options: ``serde``, ``shallow``, ``ttl``, ``clock``,
                ``check_schema``, ``schema`` (see `SaverOptions`).

        Example:
            ```python
            import asyncio

            from sqlsaver import AsyncSQLSaver


            async def main() -> None:
                async with AsyncSQLSaver.from_url("sqlite+aiosqlite:///checkpoints.db") as saver:
                    await saver.setup()


            asyncio.run(main())
            ```
        """
        cls._checked_policies(options, url)  # before there is an engine to leave
        engine = engines.async_engine(url, engine_kwargs)
        saver = cls(engine, **options)
        saver._owned_engine = engine
        if (threaded := engines.threaded_sync_url(engine.url)) is not None:
            # aiosqlite is a thread around sqlite3: run each operation whole
            # on sqlite3 in a worker thread instead (`AsyncRunner`).
            saver._threaded_engine = engines.sync_engine(threaded, engine_kwargs)
            runner = sync_runner(saver._threaded_engine, saver._check_schema, saver.schema)
            runner.url = engine.url  # errors suggest the URL given, not sqlite://
            saver._runner = AsyncRunner(runner, in_thread=True)
        saver._runner.keep_connections(engines.pre_ping(engine_kwargs))
        return saver

    async def aclose(self) -> None:
        """Stop the TTL sweeper, and dispose of the engine `from_url` created
        (never one you passed in)."""
        await self.stop_ttl_sweeper()
        await self._runner.close()
        if self._owned_engine is not None:
            await self._owned_engine.dispose()
        if self._threaded_engine is not None:
            self._threaded_engine.dispose()

    async def __aenter__(self) -> AsyncSQLSaver:
        self.loop = asyncio.get_running_loop()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def setup(self) -> None:
        """Create or upgrade sqlsaver's tables (Alembic, to head)."""
        self.loop = asyncio.get_running_loop()
        await self._runner.migrate(migrate.setup)

    # -- reads ---------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the latest of its thread."""
        if self.policies.refreshes_on_read:  # the read moves the expiry on
            return await self._runner.write(ops.get_tuple, self._opts, config)
        return await self._runner.read(ops.get_tuple, self._opts, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first, a page at a time (see `SQLSaver.list`)."""
        query: ops.ListQuery | None = ops.ListQuery.of(config, filter, before, limit)
        while query is not None:
            page, query = await self._runner.read(ops.list_page, self._opts, query)
            for item in page:
                yield item

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """`DeltaChannel` history (see `BaseCheckpointSaver`), set-based."""
        return await self._runner.read(ops.get_delta_channel_history, self._opts, config, channels)

    # -- writes --------------------------------------------------------------

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and its changed channel values atomically."""
        rows_of = partial(ops.put_rows, self._opts, config, checkpoint, metadata, new_versions)
        await self._runner.store(self.policies, rows_of, ops.store, self._opts)
        return Address.of(config).config(checkpoint["id"])

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes atomically."""
        rows_of = partial(ops.write_rows, self._opts, config, writes, task_id, task_path)
        await self._runner.store(self.policies, rows_of, ops.store, self._opts)

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, write and value of a thread."""
        await self._runner.write(ops.delete_threads, self._opts, [str(thread_id)])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (with writes and values) of these runs.

        A checkpoint belongs to the run whose id is in its metadata, which
        LangGraph fills from ``config["configurable"]["run_id"]``; a
        top-level ``config["run_id"]`` is not stored by LangGraph (for any
        saver), so runs started with only that are not found."""
        await self._runner.write(ops.delete_for_runs, self._opts, [str(r) for r in run_ids])

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a whole thread, every namespace and checkpoint id included."""
        await self._runner.write(
            ops.copy_thread, self._opts, str(source_thread_id), str(target_thread_id)
        )

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """See `SQLSaver.prune`."""
        threads = check_prune(thread_ids, strategy)
        if strategy == "delete":
            await self._runner.write(ops.delete_threads, self._opts, threads)
            return
        for thread_id in threads:
            await self._runner.write(ops.prune_keep_latest, self._opts, thread_id)

    # -- TTL -----------------------------------------------------------------

    async def aset_thread_ttl(self, thread_id: str, minutes: float | None | str) -> None:
        """See `SQLSaver.set_thread_ttl`."""
        self._ttl()
        await self._runner.write(ops.set_thread_ttl, self._opts, str(thread_id), minutes)

    async def asweep_ttl(
        self, limit: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """See `SQLSaver.sweep_ttl`."""
        ttl = self._ttl()
        sweep = Sweep(limit or ttl.sweep_limit, progress)
        for size in sweep:
            sweep.done(await self._runner.write(ops.sweep_expired, self._opts, size, ttl.strategy))
        return sweep.handled

    def start_ttl_sweeper(self, interval_minutes: float | None = None) -> asyncio.Task[None]:
        """Sweep now and then every ``interval_minutes`` (default
        ``sweep_interval_minutes``) in a task on the running loop, until
        `stop_ttl_sweeper` or `aclose`."""
        interval = self._sweep_interval(interval_minutes)
        if self._sweeper is not None and not self._sweeper[0].done():
            raise RuntimeError("the TTL sweeper is already running")
        stop = asyncio.Event()

        async def sweep_until_stopped() -> None:
            # Until cancelled, or told to stop: a driver that swallows a
            # cancellation in flight (and raises an error of its own
            # instead, logged below) must not keep the sweeper going.
            while not stop.is_set():
                try:
                    await self.asweep_ttl()
                except Exception:  # a failed sweep must not end the sweeper
                    logger.exception("sqlsaver TTL sweep failed; retrying next interval")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)

        task = asyncio.get_running_loop().create_task(sweep_until_stopped())
        self._sweeper = (task, stop)
        return task

    async def stop_ttl_sweeper(self) -> None:
        """Stop the background sweeper (a sweep in flight rolls back)."""
        if self._sweeper is None:
            return
        task, stop = self._sweeper
        stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._sweeper = None

    # -- sync twins: the async methods on the saver's loop -------------------

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not None and current is self.loop:
            coro.close()
            raise asyncio.InvalidStateError(
                "Synchronous calls to AsyncSQLSaver are only allowed from a different "
                "thread than its event loop's. On the loop, use the async interface: "
                "`await saver.aget_tuple(...)`, `await graph.ainvoke(...)`."
            )
        if self.loop is None or not self.loop.is_running():
            coro.close()
            raise RuntimeError(
                "AsyncSQLSaver's sync methods run on its event loop, which is not running. "
                "Call them from another thread while the loop runs (after `async with` or "
                "`await saver.setup()`), or use SQLSaver in sync code."
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._on_loop(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        query: ops.ListQuery | None = ops.ListQuery.of(config, filter, before, limit)
        while query is not None:
            page, query = self._on_loop(self._runner.read(ops.list_page, self._opts, query))
            yield from page

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        return self._on_loop(self.aget_delta_channel_history(config=config, channels=channels))

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._on_loop(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._on_loop(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._on_loop(self.adelete_thread(thread_id))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._on_loop(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self._on_loop(self.acopy_thread(source_thread_id, target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self._on_loop(self.aprune(thread_ids, strategy=strategy))

    def set_thread_ttl(self, thread_id: str, minutes: float | None | str) -> None:
        self._on_loop(self.aset_thread_ttl(thread_id, minutes))

    def sweep_ttl(self, limit: int | None = None) -> int:
        return self._on_loop(self.asweep_ttl(limit))
