"""Checkpoints to rows and rows back to `CheckpointTuple`s.

Pure functions, no I/O: both savers and every operation share them. Every
value goes through the saver's serde (so `EncryptedSerializer` covers all of
it); the only plaintext copy is the filterable metadata document.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from sqlsaver.dialects import filter_document, json_safe


class Address(NamedTuple):
    """Where a checkpoint lives: thread, namespace and (optionally) its id.
    (A named tuple: made in C, several times per operation.)"""

    thread_id: str
    checkpoint_ns: str = ""
    checkpoint_id: str | None = None

    @classmethod
    def of(cls, config: RunnableConfig) -> Address:
        """Read the address from a LangGraph config, with a clear error when
        the thread id is missing."""
        configurable = (config or {}).get("configurable") or {}
        thread_id = configurable.get("thread_id")
        if thread_id is None or thread_id == "":
            raise ValueError(
                "sqlsaver needs a thread id: pass "
                "config={'configurable': {'thread_id': '<your thread id>'}} "
                f"(got configurable={dict(configurable)!r})"
            )
        checkpoint_id = get_checkpoint_id(config)
        return cls(
            str(thread_id),
            str(configurable.get("checkpoint_ns") or ""),
            None if checkpoint_id is None else str(checkpoint_id),
        )

    def config(self, checkpoint_id: str | None = None) -> RunnableConfig:
        """The LangGraph config naming this address (or a sibling id)."""
        return _config(self.thread_id, self.checkpoint_ns, checkpoint_id or self.checkpoint_id)


# -- writing -----------------------------------------------------------------


def put_rows(
    serde: SerializerProtocol,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The rows of a `put`: its checkpoints-table row, and the blob rows of
    the channels that changed (`_blob_rows`).

    Where `columnar` allows, the versions of channels with a value in a
    blob row go to their own column, and the small values
    (`inline_values`) stay in the checkpoint's own serde bytes, with their
    versions; the id is only in its column. Otherwise the bytes hold every
    version and the id, and the blobs every value.
    """
    at = Address.of(config)
    inline = inline_values(checkpoint)
    return (
        _checkpoint_row(serde, at, config, checkpoint, metadata, inline),
        _blob_rows(serde, at, checkpoint, new_versions, inline or {}),
    )


def dump(serde: SerializerProtocol, value: Any) -> tuple[str, bytes]:
    """``serde.dumps_typed(value)``, its data as `bytes` exactly: binary
    columns are bound as they are (`execution.prepared._binary`), and MySQL's drivers
    would write another buffer (a ``memoryview``; a ``bytearray`` on
    asyncmy) as its repr."""
    type_, data = serde.dumps_typed(value)
    if type(data) is bytes:
        return type_, data
    try:
        return type_, bytes(memoryview(data))
    except TypeError:
        raise TypeError(
            f"{type(serde).__name__}.dumps_typed returned {type(data).__name__} data: "
            "a serializer must return (type, bytes)"
        ) from None


def _checkpoint_row(
    serde: SerializerProtocol,
    at: Address,
    config: RunnableConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    inline: dict[str, Any] | None,
) -> dict[str, Any]:
    """The checkpoints-table row of a `put` (see `put_rows`)."""
    stored: dict[str, Any] = dict(checkpoint)
    stored.pop("channel_values", None)
    versions = checkpoint["channel_versions"]
    versions_column = None
    if inline is not None:
        versions_column = {ch: v for ch, v in versions.items() if ch not in inline}
        stored["channel_versions"] = {ch: versions[ch] for ch in inline}
        stored["channel_values"] = inline
        del stored["id"]
    full_metadata = get_serializable_checkpoint_metadata(config, metadata)
    checkpoint_type, checkpoint_bytes = dump(serde, stored)
    metadata_type, metadata_bytes = dump(serde, full_metadata)
    run_id = full_metadata.get("run_id")
    return {
        "thread_id": at.thread_id,
        "checkpoint_ns": at.checkpoint_ns,
        "checkpoint_id": checkpoint["id"],
        "parent_checkpoint_id": at.checkpoint_id,
        "run_id": None if run_id is None else str(run_id),
        "checkpoint_type": checkpoint_type,
        "checkpoint": checkpoint_bytes,
        "metadata_type": metadata_type,
        "metadata_blob": metadata_bytes,
        "metadata_json": filter_document(dict(full_metadata)),
        "channel_versions": versions_column,
    }


def columnar(versions: ChannelVersions) -> bool:
    """Whether channel versions go to their own column: when each is a
    string (LangGraph's own are), which the column gives back as it is and
    which SQL compares with the blob keys, and every string is `json_safe`.
    Others stay inside the checkpoint bytes, as exact as the serde is."""
    if not set(map(type, versions.values())) <= {str}:
        return False
    # One check of all the strings together: no NUL in any, each UTF-8.
    return json_safe("".join(versions) + "".join(cast(Iterable[str], versions.values())))


# Strings up to this many characters are small values (`small`).
SMALL_STRING = 64


def small(value: Any) -> bool:
    """Whether a channel value is kept in its checkpoint's own serde bytes
    rather than in a blob row: None, a bool or number, a short string (a
    step counter, a branch marker, a route). A blob row costs ~250 bytes of
    row and index, far more than such a value; and unlike the official
    PostgreSQL saver's inline JSON, the bytes are the serde's (encrypted
    with `EncryptedSerializer`, NUL characters kept)."""
    return (
        value is None
        or type(value) in (bool, int, float)
        or (type(value) is str and len(value) <= SMALL_STRING)
    )


def inline_values(checkpoint: Checkpoint) -> dict[str, Any] | None:
    """The small values a checkpoint keeps in its own bytes (every
    checkpoint all of its own); None when its versions are not `columnar`,
    and so stay in the bytes with every value in a blob row."""
    versions = checkpoint["channel_versions"]
    if not columnar(versions):
        return None
    return {ch: v for ch, v in checkpoint["channel_values"].items() if ch in versions and small(v)}


def _blob_rows(
    serde: SerializerProtocol,
    at: Address,
    checkpoint: Checkpoint,
    new_versions: ChannelVersions,
    inline: dict[str, Any],
) -> list[dict[str, Any]]:
    """Blob rows for the channels that changed in this checkpoint.

    A channel whose new version carries no value (a `DeltaChannel` between
    snapshots, a channel that was emptied) gets no row: absence is how a
    missing value is recorded. Nor do the ``inline`` values.
    """
    values = checkpoint["channel_values"]
    rows = []
    for channel, version in new_versions.items():
        if channel in values and channel not in inline:
            value_type, value_bytes = dump(serde, values[channel])
            rows.append(
                {
                    "thread_id": at.thread_id,
                    "checkpoint_ns": at.checkpoint_ns,
                    "channel": channel,
                    "version": str(version),
                    "type": value_type,
                    "blob": value_bytes,
                }
            )
    return rows


def write_rows(
    serde: SerializerProtocol,
    config: RunnableConfig,
    writes: Sequence[tuple[str, Any]],
    task_id: str,
    task_path: str,
) -> list[dict[str, Any]]:
    """Rows of a `put_writes`; special channels get their fixed negative idx.

    One row per idx: of several writes to one special channel (LangGraph
    saves all of a task's resumes in one call when a node calls
    ``interrupt()`` twice) the last, which `replaces` the others, as in
    `InMemorySaver`; PostgreSQL refuses an upsert that proposes one key
    twice ("ON CONFLICT DO UPDATE command cannot affect row a second
    time"). Other writes take their position as idx, so never share one.
    """
    at = Address.of(config)
    if at.checkpoint_id is None:
        raise ValueError(
            "put_writes needs the checkpoint the writes belong to: "
            "config['configurable']['checkpoint_id'] is missing"
        )
    task_id, task_path = str(task_id), str(task_path)  # a UUID, say: stored as its text
    rows: dict[int, dict[str, Any]] = {}
    for position, (channel, value) in enumerate(writes):
        idx = WRITES_IDX_MAP.get(channel, position)
        value_type, value_bytes = dump(serde, value)
        rows[idx] = {
            "thread_id": at.thread_id,
            "checkpoint_ns": at.checkpoint_ns,
            "checkpoint_id": at.checkpoint_id,
            "task_id": task_id,
            "idx": idx,
            "task_path": task_path,
            "channel": channel,
            "type": value_type,
            "blob": value_bytes,
        }
    return list(rows.values())


def replaces(channel: str) -> bool:
    """Whether a write to ``channel`` replaces a stored one of the same task.

    Special channels (errors, interrupts, resumes, scheduled) do: a later
    interrupt or error of a task supersedes the earlier one. Ordinary
    writes are idempotent, and the first one wins (as in `InMemorySaver`).
    """
    return channel in WRITES_IDX_MAP


# -- reading -----------------------------------------------------------------


def load(serde: SerializerProtocol, type_: str, data: bytes | None) -> Any:
    return serde.loads_typed((type_, data if type(data) is bytes else _bytes(data)))


def _bytes(data: Any) -> bytes:
    """A driver's binary value as bytes (some give memoryviews), NULL as
    empty."""
    return bytes(data) if data is not None else b""


# `writes_sort_key(task_path, task_id, idx)` of a write row (task_id, idx,
# task_path, ...), which is the tuple of those three: picked in C, not by a
# Python call per write. tests/test_behaviour.py sorts by LangGraph's own
# function and compares (test_pending_writes_come_back_in_..._order).
WRITE_ORDER = operator.itemgetter(2, 0, 1)


def pending_writes(serde: SerializerProtocol, rows: Iterable[Sequence[Any]]) -> list[PendingWrite]:
    """Writes as (task_id, idx, task_path, channel, type, blob) tuples, in the
    order LangGraph applies them: `writes_sort_key`."""
    loads = serde.loads_typed  # called here, not through `load`: a frame less per write
    return [
        (task_id, channel, loads((type_, blob if type(blob) is bytes else _bytes(blob))))
        for task_id, _, _, channel, type_, blob in sorted(rows, key=WRITE_ORDER)
    ]


def stored_checkpoint(serde: SerializerProtocol, row: Any) -> dict[str, Any]:
    """The stored checkpoint dict of a checkpoints row, with all its channel
    versions (those in their column and those inside) and its inline
    values (``channel_values``; the others are in blob rows)."""
    stored: dict[str, Any] = load(serde, row.checkpoint_type, row.checkpoint)
    stored.setdefault("id", row.checkpoint_id)
    if row.channel_versions is not None:
        stored["channel_versions"] = {**stored.get("channel_versions", {}), **row.channel_versions}
    stored.setdefault("channel_values", {})
    return stored


def blob_versions(serde: SerializerProtocol, row: Any) -> Mapping[str, Any]:
    """The versions of a checkpoints row's channels whose values are in
    blob rows, decoding the checkpoint only when they are not in their
    column."""
    if row.channel_versions is not None:
        return cast(Mapping[str, Any], row.channel_versions)
    return stored_blob_versions(stored_checkpoint(serde, row))


def stored_blob_versions(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The versions of a `stored_checkpoint`'s channels whose values are in
    blob rows (not kept inline)."""
    inline = stored["channel_values"]
    return {ch: v for ch, v in stored["channel_versions"].items() if ch not in inline}


def blob_keys(
    thread_id: str, checkpoint_ns: str, versions: Mapping[str, Any]
) -> set[tuple[str, str, str, str]]:
    """The blob keys channel values of these versions live under."""
    return {
        (thread_id, checkpoint_ns, channel, str(version)) for channel, version in versions.items()
    }


BlobKey = tuple[str, str, str, str]


def value_keys(row: Any, stored: Mapping[str, Any]) -> dict[str, BlobKey]:
    """The blob key of each channel of a checkpoints row whose value is in a
    blob row (not inline), by channel: its versions from their column, or
    from its `stored_checkpoint` where they are not in the column."""
    versions = row.channel_versions
    if versions is None:
        versions = stored_blob_versions(stored)
    thread_id, checkpoint_ns = row.thread_id, row.checkpoint_ns
    return {ch: (thread_id, checkpoint_ns, ch, str(v)) for ch, v in versions.items()}


def checkpoint_tuple(
    serde: SerializerProtocol,
    row: Any,
    stored: Mapping[str, Any],
    keys: Mapping[str, BlobKey],
    blob_values: Mapping[BlobKey, Any],
    writes: list[PendingWrite],
) -> CheckpointTuple:
    """Assemble a `CheckpointTuple` from a checkpoints row, its decoded
    checkpoint, the blob keys of its values (`value_keys`) and the loaded
    blobs, and its pending writes. A version without a stored value leaves
    its channel out (a `DeltaChannel` between snapshots)."""
    thread_id, checkpoint_ns = row.thread_id, row.checkpoint_ns
    channel_values = dict(stored["channel_values"])
    for channel, key in keys.items():
        if key in blob_values:
            channel_values[channel] = blob_values[key]
    parent_id = row.parent_checkpoint_id
    return CheckpointTuple(
        config=_config(thread_id, checkpoint_ns, row.checkpoint_id),
        checkpoint={**stored, "channel_values": channel_values},  # type: ignore[typeddict-item]
        metadata=load(serde, row.metadata_type, row.metadata_blob),
        parent_config=_config(thread_id, checkpoint_ns, parent_id) if parent_id else None,
        pending_writes=writes,
    )


def _config(thread_id: str, checkpoint_ns: str, checkpoint_id: str | None) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": checkpoint_ns,
            "checkpoint_id": checkpoint_id,
        }
    }
