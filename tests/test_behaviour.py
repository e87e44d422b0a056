"""Data fidelity and edge cases the official conformance suite does not reach.

Every test runs on each real backend (SQLite, PostgreSQL, MySQL/MariaDB), and
most of them through both savers: `SQLSaver`'s sync methods and
`AsyncSQLSaver`'s async ones, behind one async interface (`Saver`).

- pending writes: `writes_sort_key` order; special channels replace (also
  several writes to one in one call), ordinary writes keep the first value
  (compared with `InMemorySaver`)
- exact round trips: NUL, lone surrogates, non-BMP text in channel values,
  writes and metadata (top-level metadata strings lose NUL, as in LangGraph)
- thread ids: 255 characters of any script, case, trailing spaces, Unicode
  normalization forms are all distinct threads
- deep subgraph namespaces; a 16 MiB channel value
- metadata filters: hostile keys and values, JSON-path look-alikes, and a
  randomized comparison with `InMemorySaver`
- clear errors for bad input, unknown or mistyped saver options, a database
  not set up, bad prune/copy calls
- `EncryptedSerializer`: no plaintext in the tables
- atomicity: a failing put / put_writes leaves no rows, also inside a
  caller's transaction
- `get_next_version` ordering, `with_allowlist` copies
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pickle
import random
import subprocess
import sys
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import caller_engine_args
from langgraph.checkpoint.base import (
    ERROR,
    INTERRUPT,
    RESUME,
    SCHEDULED,
    WRITES_IDX_MAP,
    writes_sort_key,
)
from langgraph.checkpoint.conformance.test_utils import generate_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from sqlalchemy import Engine, create_engine, inspect, make_url, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from sqlsaver import AsyncSQLSaver, SchemaNotReadyError, SQLSaver, dialects
from sqlsaver.models import blobs as B
from sqlsaver.models import checkpoints as C
from sqlsaver.models import writes as W

# -- one async interface over both savers -----------------------------------


class Saver:
    """`await saver.put(...)` calls `SQLSaver.put` or awaits `AsyncSQLSaver.aput`;
    `list` returns a list. `inner` is the real saver."""

    def __init__(self, inner: SQLSaver | AsyncSQLSaver) -> None:
        self.inner = inner
        self.is_async = isinstance(inner, AsyncSQLSaver)

    def __getattr__(self, name: str) -> Any:
        if self.is_async:
            return getattr(self.inner, "a" + name)
        method = getattr(self.inner, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return method(*args, **kwargs)

        return call

    async def list(self, config: Any, **kwargs: Any) -> list[Any]:
        if self.is_async:
            return [t async for t in self.inner.alist(config, **kwargs)]
        return list(self.inner.list(config, **kwargs))

    async def setup(self) -> None:
        if self.is_async:
            await self.inner.setup()
        else:
            self.inner.setup()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def saver(kind: str, backend: Any, request: pytest.FixtureRequest) -> Saver:
    """The session's `SQLSaver`, or a fresh `AsyncSQLSaver`, on the backend."""
    return Saver(request.getfixturevalue(f"{kind}_saver"))


@contextlib.asynccontextmanager
async def cleanup(saver: Saver, *thread_ids: str) -> AsyncIterator[None]:
    """Delete threads written with a non-default serde when the block ends, so
    other tests' `list(None)` never meets rows they cannot decode."""
    try:
        yield
    finally:
        for thread_id in thread_ids:
            await saver.delete_thread(thread_id)


@contextlib.asynccontextmanager
async def open_saver(kind: str, backend: Any, **kwargs: Any) -> AsyncIterator[Saver]:
    """A saver of `kind` on its own engine (e.g. with another serde)."""
    if kind == "sync":
        with SQLSaver.from_url(backend.sync_url, **kwargs) as inner:
            yield Saver(inner)
    else:
        async with AsyncSQLSaver.from_url(backend.async_url, **kwargs) as inner:
            yield Saver(inner)


@pytest.fixture
def db(backend: Any) -> Iterator[Engine]:
    """A plain engine for looking at the raw tables."""
    engine = create_engine(backend.sync_url)
    yield engine
    engine.dispose()


def rows(db: Engine, thread_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of a thread, per table."""
    with db.connect() as conn:
        return {
            t.name: sorted(
                tuple(r) for r in conn.execute(select(t).where(t.c.thread_id == thread_id))
            )
            for t in (C, B, W)
        }


# -- checkpoint helpers -------------------------------------------------------


def cfg(thread_id: str, ns: str | None = "", checkpoint_id: str | None = None) -> dict[str, Any]:
    configurable: dict[str, Any] = {"thread_id": thread_id}
    if ns is not None:
        configurable["checkpoint_ns"] = ns
    if checkpoint_id is not None:
        configurable["checkpoint_id"] = checkpoint_id
    return {"configurable": configurable}


async def put(
    saver: Saver,
    thread_id: str,
    values: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    ns: str = "",
    parent: str | None = None,
    checkpoint_id: str | None = None,
) -> dict[str, Any]:
    """Store a checkpoint whose channels all get new versions; its config."""
    values = values or {}
    versions = {ch: saver.inner.get_next_version(None, None) for ch in values}
    cp = generate_checkpoint(
        checkpoint_id=checkpoint_id, channel_values=values, channel_versions=versions
    )
    return await saver.put(cfg(thread_id, ns, parent), cp, metadata or {}, versions)


async def put_both(saver: Saver, mem: InMemorySaver, thread_id: str, metadata: dict) -> str:
    """The same checkpoint into a sqlsaver and an `InMemorySaver`; its id."""
    cp = generate_checkpoint()
    await saver.put(cfg(thread_id), cp, metadata, {})
    mem.put(cfg(thread_id), cp, metadata, {})
    return cp["id"]


async def assert_same_matches(
    saver: Saver, mem: InMemorySaver, threads: list[str], mine: set[str], filters: list[dict]
) -> None:
    """`list(config, filter=f)` finds the same checkpoints (of `mine`) as
    `InMemorySaver`, for each thread's config and (non-empty filters) for none."""
    mismatches = []
    for f in filters:
        for config in [*(cfg(t, None) for t in threads), *([None] if f else [])]:
            got = {t.checkpoint["id"] for t in await saver.list(config, filter=f)} & mine
            want = {t.checkpoint["id"] for t in mem.list(config, filter=f)}
            if got != want:
                mismatches.append((f, config and config["configurable"]["thread_id"], got ^ want))
    assert not mismatches, (
        f"{len(mismatches)} filters disagree with InMemorySaver: {mismatches[:5]}"
    )


async def pending(saver: Saver, config: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """The pending writes of a checkpoint, via get_tuple and via list (same)."""
    by_get = (await saver.get_tuple(config)).pending_writes
    configurable = config["configurable"]
    listed = await saver.list(
        cfg(configurable["thread_id"], configurable["checkpoint_ns"], configurable["checkpoint_id"])
    )
    assert [t.pending_writes for t in listed] == [by_get]
    return by_get


def strip_top_level_nul(metadata: dict[str, Any]) -> dict[str, Any]:
    """What LangGraph stores of metadata: top-level strings lose NUL."""
    return {k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in metadata.items()}


# -- 1, 2: pending writes ----------------------------------------------------


async def test_pending_writes_come_back_in_writes_sort_key_order(
    saver: Saver, thread_id: str
) -> None:
    config = await put(saver, thread_id)
    tasks = [  # (task_path, task_id, channels): paths that sort differently as bytes, ids random
        ("~__pregel_pull, node_b", str(uuid.uuid4()), ["a", "b"]),
        ("~__pregel_pull, node_a", str(uuid.uuid4()), ["b", "a", "a"]),
        ("~__pregel_pull, node_a", str(uuid.uuid4()), ["x"] * 12),  # idx 10, 11 after 2
        ("~__pregel_pull, Node_a", str(uuid.uuid4()), ["a"]),
        ("~__pregel_push, 0, ~__pregel_pull, node_b, 2", str(uuid.uuid4()), ["b"]),
        ("~__pregel_push, 0, ~__pregel_pull, node_b, 10", str(uuid.uuid4()), ["b", ERROR]),
        ("~__pregel_pull, nöde", str(uuid.uuid4()), ["a"]),
        ("", str(uuid.uuid4()), ["z", "a"]),
    ]
    expected = []
    for path, task_id, channels in tasks:
        for idx, ch in enumerate(channels):
            expected.append(
                (
                    writes_sort_key(path, task_id, WRITES_IDX_MAP.get(ch, idx)),
                    (task_id, ch, f"{task_id}/{idx}"),
                )
            )
    for path, task_id, channels in random.Random(1).sample(tasks, len(tasks)):
        await saver.put_writes(
            config, [(ch, f"{task_id}/{i}") for i, ch in enumerate(channels)], task_id, path
        )
    assert await pending(saver, config) == [w for _, w in sorted(expected)]


@pytest.mark.parametrize("channel", list(WRITES_IDX_MAP))
async def test_repeated_special_write_replaces_the_value(
    saver: Saver, thread_id: str, channel: str
) -> None:
    config = await put(saver, thread_id)
    await saver.put_writes(config, [(channel, "first")], "task-1")
    await saver.put_writes(config, [(channel, "other task")], "task-2")
    await saver.put_writes(config, [(channel, "second")], "task-1")
    assert await pending(saver, config) == [
        ("task-1", channel, "second"),
        ("task-2", channel, "other task"),
    ]


WRITE_SEQUENCES = {
    "ordinary": [[("a", 1), ("b", 2)], [("a", 10), ("b", 20), ("c", 30)], [("a", 100)]],
    "special-after-ordinary": [[("a", 1)], [(ERROR, "e1")], [("a", 2)], [(ERROR, "e2")]],
    "mixed-batch": [[("a", 1), (INTERRUPT, "i1")], [("a", 2), (INTERRUPT, "i2")]],
    # One call, several writes to one special channel (one key): the last
    # counts. LangGraph saves a task's resumes so (two interrupt() calls in
    # one node); PostgreSQL refused such an upsert.
    "special-repeated-in-one-call": [
        [(RESUME, "r1"), (RESUME, "r2")],
        [(INTERRUPT, "i1"), ("a", 1), (INTERRUPT, "i2"), (RESUME, "r3"), ("b", 2), (RESUME, "r4")],
        [(ERROR, "e1"), (SCHEDULED, "s1"), (ERROR, "e2"), (SCHEDULED, "s2"), ("c", 3)],
    ],
}


@pytest.mark.parametrize(
    "sequence",
    [
        "ordinary",
        "special-after-ordinary",
        "mixed-batch",
        "special-repeated-in-one-call",
    ],
)
async def test_repeated_writes_match_in_memory_saver(
    saver: Saver, thread_id: str, sequence: str
) -> None:
    """Ordinary writes: the first value wins (a repeat is ignored, new idx are
    added); special channels: the last value wins. Same as InMemorySaver."""
    mem = InMemorySaver()
    cp = generate_checkpoint()
    config = await saver.put(cfg(thread_id), cp, {}, {})
    mem.put(cfg(thread_id), cp, {}, {})
    for writes in WRITE_SEQUENCES[sequence]:
        await saver.put_writes(config, writes, "task-1", "path")
        mem.put_writes(config, writes, "task-1", "path")
    assert await pending(saver, config) == mem.get_tuple(config).pending_writes
    if sequence == "special-repeated-in-one-call":
        assert await pending(saver, config) == [
            ("task-1", RESUME, "r4"),
            ("task-1", INTERRUPT, "i2"),
            ("task-1", SCHEDULED, "s2"),
            ("task-1", ERROR, "e2"),
            ("task-1", "a", 1),
            ("task-1", "b", 2),  # idx 4: ("c", 3) has it too, and comes later
        ]


# -- 3: exact round trips ----------------------------------------------------

TRICKY = {
    "nul": "a\x00b",
    "lead_nul": "\x00abc",
    "only_nul": "\x00",
    "non_bmp": "😀𝔘\U0010ffff",
    "nested": {"k\x00": ["\x00", "😀\x00𝔘", {"𝔘\x00": "x\x00y"}], "n": [1, 2.5, None, True]},
    "\x00key": "v",
    "😀": "\u2028\ufeff",
}


class PickleSerde:
    """Stores any Python object exactly. (LangGraph's msgpack serde turns a lone
    surrogate in a channel value into "?", so it cannot carry them.)"""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return "pickle", pickle.dumps(obj)

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        return pickle.loads(data[1])


async def assert_round_trip(saver: Saver, thread_id: str, values: dict, metadata: dict) -> None:
    config = await put(saver, thread_id, values, metadata)
    await saver.put_writes(config, [("w", values)], "task")
    want_metadata = strip_top_level_nul(metadata)
    listed = await saver.list(cfg(thread_id))
    for t in [await saver.get_tuple(config), *listed]:
        assert t.checkpoint["channel_values"] == values
        assert t.metadata == want_metadata
        assert t.pending_writes == [("task", "w", values)]
    for key, value in want_metadata.items():  # each metadata entry finds it
        assert [t.config for t in await saver.list(cfg(thread_id), filter={key: value})] == [config]


async def test_nul_and_non_bmp_text_round_trips(saver: Saver, thread_id: str) -> None:
    await assert_round_trip(saver, thread_id, {"c": TRICKY, "s": "\x00😀\x00"}, dict(TRICKY))
    # top-level metadata loses its NUL (LangGraph's rule): "\x00abc" is found as "abc" only
    assert len(await saver.list(cfg(thread_id), filter={"lead_nul": "abc"})) == 1
    assert await saver.list(cfg(thread_id), filter={"lead_nul": "\x00abc"}) == []
    assert (
        await saver.list(cfg(thread_id), filter={"nested": {**TRICKY["nested"], "k\x00": []}}) == []
    )


async def test_lone_surrogates_round_trip(kind: str, backend: Any, thread_id: str) -> None:
    sur = {
        "lone": "x\ud800y",
        "\udfffkey": ["\udc00", {"\ud83d": "\x00\ude00"}],
        "pair": "\ud83d\ude00",
    }
    async with open_saver(kind, backend, serde=PickleSerde()) as saver, cleanup(saver, thread_id):
        await assert_round_trip(saver, thread_id, {"c": sur, "t": "\ud800"}, {**sur, "nested": sur})
        assert await saver.list(cfg(thread_id), filter={"lone": "x\ud801y"}) == []


# -- 4, 5, 6: keys and sizes -------------------------------------------------


def thread_ids(tag: str) -> list[str]:
    """Thread ids that only a byte-exact key column tells apart."""
    long_ids = [tag + c * (255 - len(tag)) for c in ("x", "é", "😀", "𝔘")]
    long_ids.append((tag + "a𝔘é😀" * 64)[:255])
    return [
        f"Thread-{tag}", f"thread-{tag}", f"THREAD-{tag}",
        f"a-{tag}", f"a-{tag} ", f"a-{tag}  ", f" a-{tag}", f"a-{tag}\t",
        unicodedata.normalize("NFC", f"é-{tag}"), unicodedata.normalize("NFD", f"é-{tag}"),
        f"ß-{tag}", f"ss-{tag}", *long_ids,
    ]  # fmt: skip


async def test_thread_ids_are_exact_and_distinct(saver: Saver) -> None:
    ids = thread_ids(uuid.uuid4().hex[:8])
    assert all(len(t) == 255 for t in ids[-5:]) and len(set(ids)) == len(ids)
    for i, tid in enumerate(ids):
        await put(saver, tid, {"c": i}, {"i": i})
    for i, tid in enumerate(ids):
        got = await saver.get_tuple(cfg(tid))
        assert got.config["configurable"]["thread_id"] == tid
        assert got.checkpoint["channel_values"] == {"c": i}
        assert [t.metadata["i"] for t in await saver.list(cfg(tid))] == [i]
    await saver.delete_thread(ids[0])  # "Thread-..." goes, "thread-..." stays
    assert await saver.get_tuple(cfg(ids[0])) is None
    assert all([await saver.get_tuple(cfg(tid)) for tid in ids[1:]])


async def test_deep_subgraph_namespaces(saver: Saver, thread_id: str) -> None:
    levels = [f"node_{i}:{uuid.uuid4()}" for i in range(6)]
    namespaces = ["|".join(levels[:n]) for n in range(7)]  # "", then 1..6 levels deep
    namespaces.append("|".join([*levels[:5], f"node_x:{uuid.uuid4()}"]))  # a sibling of the deepest
    for n, ns in enumerate(namespaces):
        await put(saver, thread_id, {"depth": n}, {"depth": n}, ns=ns)
    for n, ns in enumerate(namespaces):
        got = await saver.get_tuple(cfg(thread_id, ns))
        assert got.config["configurable"]["checkpoint_ns"] == ns
        assert got.checkpoint["channel_values"] == {"depth": n}
        listed = await saver.list(cfg(thread_id, ns))
        assert [
            (t.config["configurable"]["checkpoint_ns"], t.metadata["depth"]) for t in listed
        ] == [(ns, n)]
    assert len(await saver.list(cfg(thread_id, None))) == len(namespaces)


async def test_16_mib_channel_value_and_write(saver: Saver, thread_id: str) -> None:
    big = random.Random(16).randbytes(16 * 2**20)
    config = await put(saver, thread_id, {"big": big, "small": 1})
    await saver.put_writes(config, [("big", big)], "task")
    got = await saver.get_tuple(config)
    assert got.checkpoint["channel_values"]["big"] == big
    assert got.pending_writes == [("task", "big", big)]


# -- 7: metadata filters -----------------------------------------------------

HOSTILE = [
    '"', "'", "`", "$", "..", "$.a", "a.b", "$.a.b", "a[0]", "$[0]", "*", "%", "_", "?", ":a",
    '"); DROP TABLE x; --', "'); DROP TABLE sqlsaver_checkpoints; --", "\\", "\\\\", '\\"',
    "\\u0000", "\x00", "a\x00b", "{}", "[]", "null", "true", "1", "", " ", "é", "😀", "\u2028",
    "{'a': 1}", '{"a": 1}', "->>", "@>",
]  # fmt: skip


async def test_hostile_filter_keys_and_values(saver: Saver, thread_id: str) -> None:
    mem, mine = InMemorySaver(), set()
    for i, word in enumerate(HOSTILE):
        mine.add(
            await put_both(saver, mem, thread_id, {word: word, "i": i, "nested": {word: [word]}})
        )
    for metadata in [  # keys that spell another key's JSON path
        {"a": {"b": 1}}, {"a.b": 1}, {"$.a": {"b": 1}}, {"$": {"a": 1}}, {"a": {"b": {"c": 1}}},
        {"a": [{"b": 1}]}, {'a"': 1}, {'a\\"': 1}, {"a\\": 1}, {"\\u0061": 1}, {"a": 1},
    ]:  # fmt: skip
        mine.add(await put_both(saver, mem, thread_id, metadata))
    filters = [{k: v} for i, k in enumerate(HOSTILE) for v in (k, HOSTILE[i - 1], [k], 1)]
    filters += [{"nested": {k: [k]}} for k in HOSTILE] + [{"nested": {k: k}} for k in HOSTILE[:5]]
    filters += [
        {"a.b": 1}, {"$.a.b": 1}, {"$.a": 1}, {"a": {"b": 1}}, {"a": 1}, {"$": {"a": 1}},
        {"a[0].b": 1}, {"a": [{"b": 1}]}, {"a.b.c": 1}, {'a"': 1}, {'a\\"': 1}, {"a\\": 1},
        {"\\u0061": 1}, {"a": 1, "a.b": 1}, {'"a"': 1}, {"$.a": {"b": 1}},
    ]  # fmt: skip
    await assert_same_matches(saver, mem, [thread_id], mine, filters)
    assert len(await saver.list(cfg(thread_id))) == len(mine)  # nothing was dropped


def test_canonical_spellings_are_json_dumps_spellings() -> None:
    """The shortcuts of `canonical_key` and `canonical_json` (strings JSON
    writes as they are, ints, bools, None, empty containers) spell exactly what `json.dumps`
    does, which the filters and every stored filter document rely on."""

    def slow(value: Any) -> str:
        equal_form = dialects._python_equal_form(value)
        return json.dumps(equal_form, ensure_ascii=True, sort_keys=True, separators=(",", ":"))

    words = [*HOSTILE, "\x7f", "a\tb", "\n", "source", "step", "run_id", "~", " a ", "a/b"]
    for word in words:
        assert dialects.canonical_key(word) == slow(word)[1:-1], word
        assert dialects.canonical_json(word) == slow(word), word
    values = [0, 1, -7, 2**70, True, False, None, 2.0, 2.5, [True], {"b": 1, "a": None}]
    for value in [*values, {}, [], ()]:
        assert dialects.canonical_json(value) == slow(value), value


def random_value(rng: random.Random, python_eq: bool, top: bool = True, depth: int = 0) -> Any:
    """A metadata value. `python_eq` adds values whose Python `==` and JSON
    equality differ: bools beside 0/1, integral floats inside containers."""
    scalars: list[Any] = [2, -7, 2**53, 1.5, -2.5, True, False, None]
    scalars += ["", "1", "2", "true", "null", "a", "A", "a ", "é", "😀", "\x00a"]
    if top or python_eq:
        scalars += [2.0, -7.0, float(2**53)]
    if python_eq:
        scalars += [0, 1, 1.0, 0.0, -0.0]
    r = rng.random()
    if depth < 2 and r < 0.15:
        return [random_value(rng, python_eq, False, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2 and r < 0.3:
        keys = rng.sample(["x", "y", "z", "1"], rng.randint(0, 3))
        return {k: random_value(rng, python_eq, False, depth + 1) for k in keys}
    return rng.choice(scalars)


def twin(value: Any, python_eq: bool, top: bool = True) -> Any:
    """An equal value spelled differently: other dict key order, and int <->
    float (at top level; anywhere with `python_eq`)."""
    if isinstance(value, list):
        return [twin(v, python_eq, False) for v in value]
    if isinstance(value, dict):
        return {k: twin(value[k], python_eq, False) for k in reversed(value)}
    if isinstance(value, bool) or not (top or python_eq):
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return float(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@pytest.mark.parametrize(
    "python_eq",
    [
        pytest.param(False, id="json-equal-values"),
        pytest.param(True, id="python-equal-values"),
    ],
)
async def test_random_filters_match_in_memory_saver(saver: Saver, python_eq: bool) -> None:
    rng = random.Random(7)
    keys = ["a", "b", "c", "a.b", "$.a"]
    threads = [f"t-{uuid.uuid4()}" for _ in range(2)]
    mem, mine, stored = InMemorySaver(), set(), []
    for _ in range(40):
        metadata = {k: random_value(rng, python_eq) for k in rng.sample(keys, rng.randint(0, 4))}
        stored.append(strip_top_level_nul(metadata))
        mine.add(await put_both(saver, mem, rng.choice(threads), metadata))
    filters: list[dict] = [{}]
    for metadata in stored:  # filters that should match: part of a stored metadata, respelled
        picked = rng.sample(sorted(metadata), rng.randint(0, len(metadata)))
        filters.append(
            {k: twin(metadata[k], python_eq) if rng.random() < 0.5 else metadata[k] for k in picked}
        )
    for _ in range(60):  # and arbitrary ones
        filters.append(
            {k: random_value(rng, python_eq) for k in rng.sample(keys, rng.randint(1, 2))}
        )
    await assert_same_matches(saver, mem, threads, mine, filters)


@pytest.mark.parametrize(
    ("stored", "query"),
    [
        ({"a": 1}, {"a": 1.0}),
        ({"a": {"x": 1, "y": [2, "3"]}}, {"a": {"y": [2, "3"], "x": 1}}),
        ({"a": None}, {"a": None}),
        ({"a": "1"}, {"a": 1}),
        ({"a": [1, 2]}, {"a": [2, 1]}),
        ({"a": True}, {"a": 1}),  # True == 1 == 1.0 in Python
        ({"a": 1.0}, {"a": True}),
        ({"a": [1.0]}, {"a": [1]}),
        ({"a": {"x": 2.0}}, {"a": {"x": 2}}),
        ({"b": 1}, {"a": None}),  # metadata.get("a") == None: a missing key matches
    ],
)  # fmt: skip
async def test_filter_equality_like_in_memory_saver(
    saver: Saver, thread_id: str, stored: dict, query: dict
) -> None:
    mem = InMemorySaver()
    mine = {await put_both(saver, mem, thread_id, stored)}
    await assert_same_matches(saver, mem, [thread_id], mine, [query])


# -- 8: clear errors ---------------------------------------------------------


@pytest.mark.parametrize(
    "configurable", [{}, {"thread_id": None}, {"thread_id": ""}, {"checkpoint_ns": ""}]
)
async def test_config_without_thread_id(saver: Saver, configurable: dict) -> None:
    config = {"configurable": configurable}
    with pytest.raises(ValueError, match="thread_id"):
        await saver.get_tuple(config)
    with pytest.raises(ValueError, match="thread_id"):
        await saver.put(config, generate_checkpoint(), {}, {})
    with pytest.raises(ValueError, match="thread_id"):
        await saver.put_writes(
            {"configurable": {**configurable, "checkpoint_id": "x"}}, [("a", 1)], "t"
        )


async def test_list_with_config_without_thread_id_raises(saver: Saver, thread_id: str) -> None:
    await put(saver, thread_id)
    with pytest.raises((ValueError, KeyError)):
        await saver.list({"configurable": {"checkpoint_ns": ""}}, limit=1)


@pytest.mark.parametrize(
    "url", ["nosuchdb://host/db", "not a url", "postgresql+nosuchdriver://h/db", ""]
)
async def test_from_url_rejects_unknown_schemes(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        SQLSaver.from_url(url)
    with pytest.raises(ValueError, match="URL"):
        AsyncSQLSaver.from_url(url)


BAD_OPTIONS = {  # options, the error, what it says ({saver}: the class)
    "typo": (
        {"shalow": True},
        TypeError,
        r"^{saver} got unknown option 'shalow' \(did you mean 'shallow'\?\); "
        r"its options are serde, shallow, ttl, clock, check_schema, schema"
        r"( \(create_engine's settings, such as pool_size, go in engine_kwargs=\{...\}\))?$",
    ),
    "engine-setting": (
        {"pool_size": 5},
        TypeError,
        r"^{saver} got unknown option 'pool_size'; its options are serde, shallow, ",
    ),
    "not-an-option": (
        {"search_path": "x"},
        TypeError,
        r"^{saver} got unknown option 'search_path'; its options are serde, shallow, ",
    ),
    "schema-not-str": ({"schema": 5}, TypeError, "^schema must be a schema name"),
    "schema-not-identifier": (
        {"schema": 'agents"; DROP TABLE x; --'},
        ValueError,
        "^schema must be a plain identifier",
    ),
    "several": (
        {"shallow": True, "ttl_minutes": 5, "chek_schema": False},
        TypeError,
        r"^{saver} got unknown options 'ttl_minutes', 'chek_schema' \(did you mean "
        r"'check_schema'\?\); its options",
    ),
    "shallow-not-bool": ({"shallow": "yes"}, TypeError, "^shallow must be True or False"),
    "check-schema-not-bool": (
        {"check_schema": None},
        TypeError,
        "^check_schema must be True or False, got None",
    ),
    "ttl-not-settings": ({"ttl": 60}, TypeError, r"^ttl must be a dict of TTL settings"),
    "clock-not-callable": ({"clock": 0.0}, TypeError, "^clock must be a function"),
    "serde-not-serializer": ({"serde": "json"}, TypeError, "^serde must be a serializer"),
    "bad-ttl-setting": ({"ttl": {"default_ttl": -1}}, ValueError, "default_ttl must be a positive"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
async def test_bad_options_are_refused(kind: str, backend: Any, case: str) -> None:
    """An option neither saver takes, or one of the wrong type, raises in
    the constructors and `from_url`, before `from_url` makes an engine (an
    unusable URL, which would fail making one, shows the order)."""
    options, error, message = BAD_OPTIONS[case]
    cls = SQLSaver if kind == "sync" else AsyncSQLSaver
    url = backend.sync_url if kind == "sync" else backend.async_url
    message = message.replace("{saver}", cls.__name__)
    engine = create_engine(url) if kind == "sync" else create_async_engine(url)
    try:
        with pytest.raises(error, match=message):
            cls(engine, **options)
    finally:
        if kind == "sync":
            engine.dispose()
        else:
            await engine.dispose()
    for target in (url, "postgresql+nosuchdriver://h/db"):
        with pytest.raises(error, match=message) as raised:
            cls.from_url(target, **options)
        if case == "engine-setting":  # from_url says where it goes
            assert "go in engine_kwargs={...}" in str(raised.value)


@pytest.mark.parametrize("url", ["sqlite:///x.db", "mysql+pymysql://u@h/db"])
def test_async_saver_rejects_sync_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"not an async driver: use SQLSaver\.from_url"):
        AsyncSQLSaver.from_url(url)


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:///x.db", "postgresql+asyncpg://u@h/db", "mysql+asyncmy://u@h/db"]
)
def test_sync_saver_rejects_async_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"is an async driver: use AsyncSQLSaver\.from_url"):
        SQLSaver.from_url(url)


@contextlib.contextmanager
def unset_database(backend: Any, kind: str, tmp_path: Any) -> Iterator[tuple[str, dict]]:
    """(url, engine_kwargs) of a database without sqlsaver's tables: a new
    SQLite file, PostgreSQL schema or MySQL database, dropped afterwards."""
    url = backend.sync_url if kind == "sync" else backend.async_url
    name = f"nosetup_{uuid.uuid4().hex[:12]}"
    if backend.name == "sqlite":
        yield url.split("///")[0] + f"///{tmp_path}/{name}.db", {}
        return
    admin = create_engine(backend.sync_url)
    if backend.name == "postgres":
        create, drop = f'CREATE SCHEMA "{name}"', f'DROP SCHEMA "{name}" CASCADE'
        setting = (
            {"server_settings": {"search_path": name}}
            if "asyncpg" in url
            else {"options": f"-csearch_path={name}"}
        )
        target = (url, {"connect_args": setting})
    else:
        name = f"{make_url(backend.sync_url).database}_{name}"
        create, drop = f"CREATE DATABASE `{name}`", f"DROP DATABASE `{name}`"
        target = (make_url(url).set(database=name).render_as_string(hide_password=False), {})
    with admin.begin() as conn:
        conn.execute(text(create))
    try:
        yield target
    finally:
        with admin.begin() as conn:
            conn.execute(text(drop))
        admin.dispose()


async def test_database_not_set_up(kind: str, backend: Any, tmp_path: Any) -> None:
    with unset_database(backend, kind, tmp_path) as (url, engine_kwargs):
        inner = (SQLSaver if kind == "sync" else AsyncSQLSaver).from_url(
            url, engine_kwargs=engine_kwargs
        )
        async with open_saver_from(inner) as saver:
            config = cfg("t", checkpoint_id="c")
            for call in [
                lambda: saver.get_tuple(config),
                lambda: saver.list(cfg("t")),
                lambda: saver.list(None, filter={"a": 1}),
                lambda: saver.put(cfg("t"), generate_checkpoint(), {}, {}),
                lambda: saver.put_writes(config, [("a", 1)], "task"),
                lambda: saver.delete_thread("t"),
            ]:
                with pytest.raises(
                    SchemaNotReadyError, match=r"setup\(\).*python -m sqlsaver upgrade"
                ):
                    await call()
            await saver.setup()  # and setup() brings a fresh database to life
            config = await put(saver, "t", {"c": 1})
            assert (await saver.get_tuple(config)).checkpoint["channel_values"] == {"c": 1}


@contextlib.asynccontextmanager
async def open_saver_from(inner: SQLSaver | AsyncSQLSaver) -> AsyncIterator[Saver]:
    if isinstance(inner, AsyncSQLSaver):
        async with inner:
            yield Saver(inner)
    else:
        with inner:
            yield Saver(inner)


def test_upgrade_command_sets_up_a_database(tmp_path: Any) -> None:
    """The command the SchemaNotReadyError message recommends works."""
    url = f"sqlite:///{tmp_path}/cli.db"
    done = subprocess.run(
        [sys.executable, "-m", "sqlsaver", "upgrade", "--url", url], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    assert {"sqlsaver_checkpoints", "sqlsaver_blobs", "sqlsaver_writes"} <= set(
        inspect(engine).get_table_names()
    )
    engine.dispose()


async def test_prune_rejects_bad_arguments(saver: Saver, db: Engine, thread_id: str) -> None:
    await put(saver, thread_id, {"c": 1})
    await put(saver, thread_id, {"c": 2})
    before = rows(db, thread_id)
    with pytest.raises(TypeError, match="not one string"):
        await saver.prune(thread_id)
    with pytest.raises(ValueError, match="unknown prune strategy"):
        await saver.prune([thread_id], strategy="keep_none")
    assert rows(db, thread_id) == before


async def test_copy_thread_onto_existing_thread_changes_nothing(
    saver: Saver, db: Engine, thread_id: str
) -> None:
    target = f"{thread_id}-target"
    first = await put(saver, thread_id, {"c": "source 1"})
    config = await put(
        saver, thread_id, {"c": "source 2"}, parent=first["configurable"]["checkpoint_id"]
    )
    await saver.put_writes(config, [("c", "w")], "task")
    await put(saver, target, {"c": "target"})
    before = rows(db, thread_id), rows(db, target)
    with pytest.raises(ValueError, match="already has checkpoints"):
        await saver.copy_thread(thread_id, target)
    with pytest.raises(ValueError, match="two different"):
        await saver.copy_thread(thread_id, thread_id)
    assert (rows(db, thread_id), rows(db, target)) == before


async def test_copy_thread_again_onto_its_copy_changes_nothing(
    saver: Saver, db: Engine, thread_id: str
) -> None:
    """A copy run again onto the copy it made (as the saver's own retry does
    after a COMMIT whose reply was lost) succeeds and changes nothing; once
    the source has moved on, the copy is another thread's and is refused."""
    target = f"{thread_id}-copy"
    first = await put(saver, thread_id, {"c": "source 1"})
    await saver.put_writes(first, [("c", "w")], "task")
    await saver.copy_thread(thread_id, target)
    copied = rows(db, target)
    await saver.copy_thread(thread_id, target)
    assert rows(db, target) == copied
    await put(saver, thread_id, {"c": "source 2"}, parent=first["configurable"]["checkpoint_id"])
    with pytest.raises(ValueError, match="already has checkpoints"):
        await saver.copy_thread(thread_id, target)
    assert rows(db, target) == copied


# -- 9: encryption -----------------------------------------------------------


def plaintext_in(db: Engine, thread_id: str, needle: str) -> list[str]:
    """The columns of a thread's raw rows whose bytes contain `needle`."""
    found = []
    with db.connect() as conn:
        for table in (C, B, W):
            for row in conn.execute(select(table).where(table.c.thread_id == thread_id)):
                for column, value in row._mapping.items():
                    if isinstance(value, (bytes, bytearray, memoryview)):
                        data = bytes(value)
                    else:
                        data = json.dumps(value, ensure_ascii=False, default=str).encode()
                    if needle.encode() in data:
                        found.append(f"{table.name}.{column}")
    return found


async def test_encrypted_serializer_leaves_no_plaintext(
    kind: str, backend: Any, db: Engine, thread_id: str
) -> None:
    secret = "the launch code is 0451-ÜNICODE-😀"
    serde = EncryptedSerializer.from_pycryptodome_aes(key=b"1234567890123456")
    value = {"note": secret, "list": [secret]}
    async with open_saver(kind, backend, serde=serde) as saver, cleanup(saver, thread_id):
        config = await put(saver, thread_id, {"c": value, "s": secret}, {"step": 1})
        await saver.put_writes(config, [("c", secret), (ERROR, secret)], "task")
        got = await saver.get_tuple(config)
        assert got.checkpoint["channel_values"] == {"c": value, "s": secret}
        assert got.pending_writes == [("task", ERROR, secret), ("task", "c", secret)]
        assert [t.config for t in await saver.list(cfg(thread_id), filter={"step": 1})] == [config]
        # `s`, a short string, is kept in the (encrypted) checkpoint bytes.
        assert len(rows(db, thread_id)["sqlsaver_blobs"]) == 1
        assert plaintext_in(db, thread_id, secret) == []
        assert plaintext_in(db, thread_id, "launch code") == []
    # the scan does see plaintext when the serde leaves it there
    async with open_saver(kind, backend) as plain:
        await put(plain, f"{thread_id}-plain", {"s": secret})
    assert plaintext_in(db, f"{thread_id}-plain", secret) == ["sqlsaver_checkpoints.checkpoint"]


# -- 10: atomicity -----------------------------------------------------------

POISON = "__poison__"


class PoisonSerde(JsonPlusSerializer):
    """LangGraph's serde, except that a dict holding POISON gets no type, so
    the database refuses its row (NOT NULL): a failure in mid-write."""

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if isinstance(obj, dict) and POISON in obj:
            return None, b"poison"  # type: ignore[return-value]
        return super().dumps_typed(obj)


class Unserializable:
    def __reduce__(self) -> Any:
        raise TypeError("cannot be serialized")


async def test_failed_put_leaves_no_rows(
    kind: str, backend: Any, db: Engine, thread_id: str
) -> None:
    async with open_saver(kind, backend, serde=PoisonSerde()) as saver:
        parent = (await put(saver, thread_id, {"c": "kept"}))["configurable"]["checkpoint_id"]
        before = rows(db, thread_id)
        # blob rows are inserted, then the checkpoint row is refused
        with pytest.raises(Exception, match="(?i)null"):
            await put(saver, thread_id, {"c": "new", "d": "new"}, {POISON: 1}, parent=parent)
        with pytest.raises(TypeError):
            await put(saver, thread_id, {"c": "new", "bad": Unserializable()}, parent=parent)
        assert rows(db, thread_id) == before
        assert (await saver.get_tuple(cfg(thread_id))).checkpoint["channel_values"] == {"c": "kept"}


async def test_failed_put_writes_leaves_no_rows(
    kind: str, backend: Any, db: Engine, thread_id: str
) -> None:
    async with open_saver(kind, backend, serde=PoisonSerde()) as saver:
        config = await put(saver, thread_id, {"c": 1})
        await saver.put_writes(config, [(ERROR, "old error")], "task-0")
        before = rows(db, thread_id)
        with pytest.raises(Exception, match="(?i)null"):  # the second of three rows is refused
            await saver.put_writes(config, [("a", 1), ("b", {POISON: 1}), ("c", 3)], "task-1")
        with pytest.raises(Exception, match="(?i)null"):  # an upsert that fails keeps the old row
            await saver.put_writes(config, [(ERROR, {POISON: 1})], "task-0")
        with pytest.raises(TypeError):
            await saver.put_writes(config, [("a", 1), ("b", Unserializable())], "task-2")
        assert rows(db, thread_id) == before
        assert (await saver.get_tuple(config)).pending_writes == [("task-0", ERROR, "old error")]


class BufferSerde(JsonPlusSerializer):
    """LangGraph's serde, its data handed back as a bytearray or memoryview."""

    def __init__(self, kind: type) -> None:
        super().__init__()
        self.kind = kind

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        type_, data = super().dumps_typed(obj)
        return type_, self.kind(data)


@pytest.mark.parametrize("buffer", [bytearray, memoryview])
async def test_serializer_data_as_any_buffer_round_trips(
    kind: str, backend: Any, thread_id: str, buffer: type
) -> None:
    """Data a serializer gives as another buffer than bytes is stored as its
    bytes (PyMySQL, given a bytearray, would write its repr)."""
    serde = BufferSerde(buffer)
    async with open_saver(kind, backend, serde=serde) as saver, cleanup(saver, thread_id):
        values = {"c": ["x" * 100], "s": "small"}
        config = await put(saver, thread_id, values, {"source": "input", "n": 1})
        await saver.put_writes(config, [("c", {"v": [1, 2]})], "task-1")
        found = await saver.get_tuple(config)
        assert found.checkpoint["channel_values"] == values
        assert found.metadata["source"] == "input" and found.metadata["n"] == 1
        assert found.pending_writes == [("task-1", "c", {"v": [1, 2]})]


async def test_task_ids_and_paths_that_are_not_strings_are_stored_as_their_text(
    saver: Saver, thread_id: str
) -> None:
    config = await put(saver, thread_id, {"c": 1})
    task_id = uuid.uuid4()
    await saver.put_writes(config, [("c", 2)], task_id, 7)  # type: ignore[arg-type]
    assert (await saver.get_tuple(config)).pending_writes == [(str(task_id), "c", 2)]


class BrokenSerde(JsonPlusSerializer):
    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        return "msgpack", 7  # type: ignore[return-value]


async def test_serializer_data_that_is_no_buffer_is_refused(
    kind: str, backend: Any, db: Engine, thread_id: str
) -> None:
    async with open_saver(kind, backend, serde=BrokenSerde()) as saver:
        with pytest.raises(TypeError, match="BrokenSerde.dumps_typed returned int data"):
            await put(saver, thread_id, {"c": 1})
    assert not any(rows(db, thread_id).values())


async def test_keys_beyond_mysql_limits(
    saver: Saver, backend: Any, db: Engine, thread_id: str
) -> None:
    """A thread id over 1020 bytes or a checkpoint id over 150 bytes: MySQL's
    VARBINARY keys refuse it (never truncate) and the put leaves nothing;
    PostgreSQL and SQLite, whose keys are unbounded text, store it whole."""
    long_thread = thread_id + "😀" * 250  # > 1020 bytes
    long_id = "x" * 151
    if backend.name != "mysql":
        await put(saver, long_thread, {"c": 1})
        await put(saver, thread_id, {"c": 1}, checkpoint_id=long_id)
        assert (await saver.get_tuple(cfg(long_thread))).checkpoint["channel_values"] == {"c": 1}
        assert (await saver.get_tuple(cfg(thread_id))).checkpoint["id"] == long_id
        return
    with pytest.raises(Exception, match="(?i)too long"):
        await put(saver, long_thread, {"c": 1})
    truncated = long_thread.encode()[:1020].decode(errors="ignore")
    assert (
        rows(db, long_thread)
        == rows(db, truncated)
        == {"sqlsaver_checkpoints": [], "sqlsaver_blobs": [], "sqlsaver_writes": []}
    )
    with pytest.raises(Exception, match="(?i)too long"):  # blobs go in first, then this fails
        await put(saver, thread_id, {"c": 1}, checkpoint_id=long_id)
    assert rows(db, thread_id) == {
        "sqlsaver_checkpoints": [],
        "sqlsaver_blobs": [],
        "sqlsaver_writes": [],
    }


@contextlib.asynccontextmanager
async def in_caller_transaction(kind: str, backend: Any, serde: Any) -> AsyncIterator[Saver]:
    """A saver on a caller's Connection inside its transaction, committed when
    the block ends."""
    if kind == "sync":
        engine = create_engine(backend.sync_url, **caller_engine_args(backend.sync_url))
        try:
            with engine.connect() as conn, conn.begin():
                yield Saver(SQLSaver(conn, serde=serde))
        finally:
            engine.dispose()
    else:
        aengine = create_async_engine(backend.async_url, **caller_engine_args(backend.async_url))
        try:
            async with aengine.connect() as aconn, aconn.begin():
                yield Saver(AsyncSQLSaver(aconn, serde=serde))
        finally:
            await aengine.dispose()


async def test_failed_write_in_caller_transaction_leaves_nothing(
    kind: str, backend: Any, saver: Saver, thread_id: str
) -> None:
    async with in_caller_transaction(kind, backend, PoisonSerde()) as joined:
        config = await put(joined, thread_id, {"c": "kept"})
        with pytest.raises(Exception, match="(?i)null"):
            await put(
                joined,
                thread_id,
                {"c": "lost"},
                {POISON: 1},
                parent=config["configurable"]["checkpoint_id"],
            )
        with pytest.raises(Exception, match="(?i)null"):
            await joined.put_writes(config, [("a", "lost"), ("b", {POISON: 1})], "task-1")
        await joined.put_writes(config, [("a", "kept")], "task-2")  # the transaction goes on
    listed = await saver.list(cfg(thread_id))
    assert [t.checkpoint["channel_values"] for t in listed] == [{"c": "kept"}]
    assert listed[0].pending_writes == [("task-2", "a", "kept")]


# -- 11: versions and allowlists ----------------------------------------------


def test_get_next_version_is_strictly_increasing(saver: Saver) -> None:
    versions, current = [], None
    for _ in range(150):  # crosses 9 -> 10 -> 100
        current = saver.inner.get_next_version(current, None)
        versions.append(current)
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert [int(v.split(".")[0]) for v in versions] == list(range(1, 151))
    assert all(len(v) <= 64 for v in versions)  # fits MySQL's version key
    assert saver.inner.get_next_version(9, None) < saver.inner.get_next_version(10, None)
    assert saver.inner.get_next_version(versions[5], None) > versions[5]
    forks = {saver.inner.get_next_version(versions[5], None) for _ in range(20)}
    assert len(forks) == 20  # two forks writing one channel get different versions


@dataclasses.dataclass
class Point:
    x: int
    y: int


async def test_with_allowlist_returns_a_working_copy(
    kind: str, backend: Any, thread_id: str
) -> None:
    strict = JsonPlusSerializer(allowed_msgpack_modules=None)
    async with open_saver(kind, backend, serde=strict) as saver, cleanup(saver, thread_id):
        allowed = Saver(saver.inner.with_allowlist([(Point.__module__, "Point")]))
        assert type(allowed.inner) is type(saver.inner) and allowed.inner is not saver.inner
        config = await put(allowed, thread_id, {"p": Point(1, 2)})
        assert (await allowed.get_tuple(config)).checkpoint["channel_values"] == {"p": Point(1, 2)}
        # same database; the original's strict serde still refuses the type
        assert (await saver.get_tuple(config)).checkpoint["channel_values"] == {
            "p": {"x": 1, "y": 2}
        }
        second = await put(
            saver, thread_id, {"q": 1}, parent=config["configurable"]["checkpoint_id"]
        )
        assert [t.config for t in await allowed.list(cfg(thread_id))] == [second, config]
