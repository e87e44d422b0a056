"""Storage over time with and without shallow mode, and the cost of a TTL sweep.

    python benchmarks/retention.py --url sqlite:///retention.db --steps 2000 --threads 10000

A chat-like thread (a message list that grows every step, plus two small
channels) runs for ``--steps`` steps on a normal and on a shallow saver; every
``--every`` steps the rows and payload bytes in sqlsaver's tables are printed.
Then ``--threads`` threads expire and one `sweep_ttl()` removes them.
"""

from __future__ import annotations

import argparse
import time
import uuid

from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
from sqlalchemy import func, select

from sqlsaver import SQLSaver
from sqlsaver.models import blobs, checkpoints, writes


def storage(saver: SQLSaver, thread_id: str) -> tuple[int, int]:
    """(rows, payload bytes) stored for a thread in sqlsaver's tables."""
    engine = saver._runner.engine
    rows = size = 0
    with engine.connect() as conn:  # type: ignore[union-attr]
        for table, payload in (
            (
                checkpoints,
                func.length(checkpoints.c.checkpoint) + func.length(checkpoints.c.metadata_blob),
            ),
            (blobs, func.length(blobs.c.blob)),
            (writes, func.length(writes.c.blob)),
        ):
            count, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(payload), 0)).where(
                    table.c.thread_id == thread_id
                )
            ).one()
            rows, size = rows + count, size + int(total)
    return rows, size


def chat(saver: SQLSaver, thread_id: str, steps: int, every: int, label: str) -> None:
    config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint, messages, version = empty_checkpoint(), [], None
    for step in range(1, steps + 1):
        messages = [
            *messages,
            {"role": "user" if step % 2 else "ai", "content": f"message {step} " * 8},
        ]
        version = saver.get_next_version(version, None)
        checkpoint = create_checkpoint(checkpoint, None, step)
        checkpoint["channel_values"] = {"messages": messages, "step": step, "topic": "demo"}
        checkpoint["channel_versions"] = {"messages": version, "step": version, "topic": "1"}
        new = {"messages": version, "step": version, **({"topic": "1"} if step == 1 else {})}
        config = saver.put(config, checkpoint, {"source": "loop", "step": step}, new)
        saver.put_writes(config, [("messages", messages[-1:])], str(uuid.uuid4()))
        if step % every == 0:
            rows, size = storage(saver, thread_id)
            print(f"| {label} | {step} | {rows} | {size / 1024:.0f} KiB |")


def sweep(url: str, threads: int) -> None:
    now = [1_000_000.0]
    with SQLSaver.from_url(
        url, ttl={"default_ttl": 60, "sweep_limit": threads}, clock=lambda: now[0]
    ) as saver:
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": ["hello"] * 3}
        checkpoint["channel_versions"] = {"messages": "1"}
        for i in range(threads):
            config = {"configurable": {"thread_id": f"sweep-{i}", "checkpoint_ns": ""}}
            saver.put(config, {**checkpoint, "id": str(uuid.uuid4())}, {}, {"messages": "1"})
        now[0] += 61 * 60
        started = time.perf_counter()
        handled = saver.sweep_ttl()
        took = time.perf_counter() - started
        print(f"\nswept {handled} expired threads in {took:.2f} s ({handled / took:.0f} threads/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="sqlite:///retention.db")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=10000)
    args = parser.parse_args()
    print(f"{args.url}\n\n| saver | steps | rows | payload |\n|---|---|---|---|")
    for shallow in (False, True):
        with SQLSaver.from_url(args.url, shallow=shallow) as saver:
            saver.setup()
            chat(
                saver,
                f"chat-{uuid.uuid4()}",
                args.steps,
                args.every,
                "shallow" if shallow else "full",
            )
    sweep(args.url, args.threads)


if __name__ == "__main__":
    main()
