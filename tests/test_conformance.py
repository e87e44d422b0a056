"""LangGraph's official conformance suite, on every backend and driver.

The suite only calls a saver's async methods, so the sync saver runs it
twice: through its own async methods (a worker thread each), and through
`SyncDriven`, whose async methods call `SQLSaver`'s sync methods directly.
Every capability must be detected and pass: the base five, and
`delete_for_runs`, `copy_thread` and `prune`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import CapabilityReport

from sqlsaver import AsyncSQLSaver, SQLSaver

ALL_CAPABILITIES = {
    "put",
    "put_writes",
    "get_tuple",
    "list",
    "delete_thread",
    "delete_for_runs",
    "copy_thread",
    "prune",
}


class SyncDriven(BaseCheckpointSaver[str]):
    """Exposes a `SQLSaver`'s *sync* methods under the async names the
    conformance suite calls."""

    def __init__(self, inner: SQLSaver) -> None:
        super().__init__(serde=inner.serde)
        self.inner = inner

    async def aget_tuple(self, config: Any) -> Any:
        return self.inner.get_tuple(config)

    async def alist(self, config: Any, **kwargs: Any) -> AsyncIterator[Any]:
        for item in self.inner.list(config, **kwargs):
            yield item

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return self.inner.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: Any, writes: Any, task_id: str, task_path: str = ""
    ) -> None:
        self.inner.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.inner.delete_thread(thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        self.inner.delete_for_runs(run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        self.inner.copy_thread(source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        self.inner.prune(thread_ids, strategy=strategy)

    def get_next_version(self, current: Any, channel: Any) -> str:
        return self.inner.get_next_version(current, channel)


def _assert_full(report: CapabilityReport) -> None:
    report.print_report()
    assert set(report.results) == ALL_CAPABILITIES
    for name, result in report.results.items():
        assert result.detected, f"{name} not detected"
        assert result.passed, f"{name}: {result.failures}"
        assert result.tests_passed > 0 and result.tests_failed == result.tests_skipped == 0
    assert report.conformance_level() == "FULL"


async def test_async_saver(backend: Any) -> None:
    # PostgreSQL has two async drivers: asyncpg, and psycopg 3's async mode.
    urls = [backend.async_url]
    if backend.name == "postgres":
        urls.append(backend.sync_url)  # postgresql+psycopg:// is async under create_async_engine
    for url in urls:

        @checkpointer_test(name=f"AsyncSQLSaver[{url.split(':')[0]}]")
        async def factory(url: str = url) -> AsyncIterator[AsyncSQLSaver]:
            async with AsyncSQLSaver.from_url(url) as saver:
                yield saver

        _assert_full(await validate(factory))


@pytest.mark.parametrize("driven", ["sync-methods", "async-methods"])
async def test_sync_saver(backend: Any, sync_saver: SQLSaver, driven: str) -> None:
    @checkpointer_test(name=f"SQLSaver[{backend.sync_url.split(':')[0]}, {driven}]")
    async def factory() -> AsyncIterator[BaseCheckpointSaver]:
        yield SyncDriven(sync_saver) if driven == "sync-methods" else sync_saver

    _assert_full(await validate(factory))
