"""`SQLSaver`: the synchronous checkpointer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
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
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import URL, Engine

from sqlsaver import migrate, ops
from sqlsaver.base import SaverBase, check_prune, sync_engine
from sqlsaver.bind import SyncBind, SyncTarget


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
        from langgraph.graph import StateGraph
        from sqlsaver import SQLSaver

        with SQLSaver.from_url("sqlite:///checkpoints.db") as saver:
            saver.setup()
            graph = builder.compile(checkpointer=saver)
            graph.invoke(inputs, {"configurable": {"thread_id": "1"}})
        ```
    """

    def __init__(
        self,
        bind: SyncTarget,
        *,
        serde: SerializerProtocol | None = None,
        check_schema: bool = True,
    ) -> None:
        """
        Args:
            bind: The Engine, Connection or Session to store checkpoints through.
            serde: The serializer (default: LangGraph's `JsonPlusSerializer`).
            check_schema: On first use, raise `SchemaNotReadyError` (tables
                missing or older) or `SchemaTooNewError` unless sqlsaver's
                tables are at this sqlsaver's revision. Turn it off only if
                your own migrations manage sqlsaver's tables.
        """
        super().__init__(serde=serde)
        self._bind = SyncBind(bind, check_schema)
        self._owned_engine: Engine | None = None

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        *,
        serde: SerializerProtocol | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        check_schema: bool = True,
    ) -> SQLSaver:
        """A saver on a new engine for ``url``, disposed by `close()` or when
        the saver is used as a context manager and the block ends.

        Args:
            url: Any sync SQLAlchemy URL: ``sqlite:///file.db``,
                ``postgresql+psycopg://user@host/db``,
                ``mysql+pymysql://user@host/db``.
            serde: The serializer (e.g. an `EncryptedSerializer`).
            engine_kwargs: Extra `create_engine` arguments (pool size...).
            check_schema: Check, on first use, that sqlsaver's tables are at
                the revision this sqlsaver needs (see `__init__`).

        Example:
            ```python
            with SQLSaver.from_url("postgresql+psycopg://postgres@localhost/app") as saver:
                saver.setup()
            ```
        """
        engine = sync_engine(url, engine_kwargs)
        saver = cls(engine, serde=serde, check_schema=check_schema)
        saver._owned_engine = engine
        return saver

    def close(self) -> None:
        """Dispose of the engine `from_url` created (never one you passed in)."""
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
        self._bind.migrate(migrate.setup)

    # -- reads ---------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names, or the latest of its thread."""
        return self._bind.read(ops.get_tuple, self._opts, config)

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
            page, query = self._bind.read(ops.list_page, self._opts, query)
            yield from page

    def get_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, DeltaChannelHistory]:
        """`DeltaChannel` history (see `BaseCheckpointSaver`), set-based."""
        return self._bind.read(ops.get_delta_channel_history, self._opts, config, channels)

    # -- writes --------------------------------------------------------------

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store a checkpoint and its changed channel values atomically."""
        return self._bind.write(ops.put, self._opts, config, checkpoint, metadata, new_versions)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes atomically."""
        self._bind.write(ops.put_writes, self._opts, config, writes, task_id, task_path)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint, write and value of a thread."""
        self._bind.write(ops.delete_threads, self._opts, [str(thread_id)])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (with writes and values) of these runs."""
        self._bind.write(ops.delete_for_runs, self._opts, [str(r) for r in run_ids])

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy a whole thread, every namespace and checkpoint id included."""
        self._bind.write(ops.copy_thread, self._opts, str(source_thread_id), str(target_thread_id))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Shrink threads: ``"keep_latest"`` keeps each namespace's latest
        checkpoint (and what `DeltaChannel`s need to rebuild it), one
        transaction per thread; ``"delete"`` deletes them whole."""
        threads = check_prune(thread_ids, strategy)
        if strategy == "delete":
            self._bind.write(ops.delete_threads, self._opts, threads)
            return
        for thread_id in threads:
            self._bind.write(ops.prune_keep_latest, self._opts, thread_id)

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
            page, query = await asyncio.to_thread(self._bind.read, ops.list_page, self._opts, query)
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
