"""What `SQLSaver` and `AsyncSQLSaver` share: the pieces of the saver
contract that do no I/O."""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from sqlalchemy import URL
from typing_extensions import Unpack

from sqlsaver import engines, ops, schemas
from sqlsaver.policies import TTL, Policies

PRUNE_STRATEGIES = ("keep_latest", "delete")

# Threads a sweep handles per transaction: keeps each one short.
SWEEP_BATCH = 100


class SaverOptions(TypedDict, total=False):
    """The options of both savers (their constructors and `from_url`).

    Any other name, or a value of the wrong type, raises `TypeError`.

    Attributes:
        serde: The serializer (default: LangGraph's `JsonPlusSerializer`); an
            `EncryptedSerializer` encrypts every stored value.
        shallow: Keep only the latest checkpoint of each thread and namespace.
        ttl: A thread-level TTL, ``{"default_ttl": minutes, "strategy": "delete" |
            "keep_latest", "refresh_on_read": bool, "sweep_interval_minutes": ...,
            "sweep_limit": ...}`` (or a `TTL`).
        clock: Seconds since the epoch (UTC) for TTL; default: the database's
            clock, which every host of an app shares.
        check_schema: On first use, raise `SchemaNotReadyError` (tables missing or
            older) or `SchemaTooNewError` unless sqlsaver's tables are at this
            sqlsaver's revision. Turn it off only if your own migrations manage
            sqlsaver's tables.
    """

    serde: SerializerProtocol | None
    shallow: bool
    ttl: TTL | Mapping[str, Any] | None
    clock: Callable[[], float] | None
    check_schema: bool
    schema: str | None


# The options' names, in the order the docs give them.
OPTION_NAMES: tuple[str, ...] = tuple(SaverOptions.__annotations__)


class SaverBase(BaseCheckpointSaver[str]):
    """Shared by both savers; not used directly."""

    def __init__(self, **options: Unpack[SaverOptions]) -> None:
        policies = self._checked_policies(options)
        super().__init__(serde=options.get("serde"))
        self.policies = policies
        self._check_schema = options.get("check_schema", True)
        self.schema: str | None = options.get("schema")

    @classmethod
    def _checked_policies(
        cls, options: Mapping[str, Any], url: str | URL | None = None
    ) -> Policies:
        """The policies of a saver's options, once the options are checked:
        `TypeError` for one neither saver takes (a typo would otherwise be
        ignored: ``shalow=True`` keeps all history) or of the wrong type,
        `ValueError` for bad TTL settings or a schema on SQLite. `from_url`
        calls it with its ``url`` before it makes an engine, which an error
        would leave behind."""
        from_url = url is not None
        unknown = [name for name in options if name not in OPTION_NAMES]
        if unknown:
            named = ", ".join(_with_close_match(name, from_url) for name in unknown)
            where = (
                " (create_engine's settings, such as pool_size, go in engine_kwargs={...})"
                if from_url
                else ""
            )
            raise TypeError(
                f"{cls.__name__} got unknown option{'s' if len(unknown) > 1 else ''} {named}; "
                f"its options are {', '.join(OPTION_NAMES)}{where}"
            )
        for name in ("shallow", "check_schema"):
            if name in options and not isinstance(options[name], bool):
                raise TypeError(f"{name} must be True or False, got {options[name]!r}")
        serde = options.get("serde")
        if serde is not None and not (
            all(hasattr(serde, m) for m in ("dumps_typed", "loads_typed"))
            or all(hasattr(serde, m) for m in ("dumps", "loads"))
        ):
            raise TypeError(
                f"serde must be a serializer with dumps_typed and loads_typed (such as "
                f"LangGraph's JsonPlusSerializer), got {serde!r}"
            )
        clock = options.get("clock")
        if clock is not None and not callable(clock):
            raise TypeError(
                f"clock must be a function returning seconds since the epoch, got {clock!r}"
            )
        ttl = options.get("ttl")
        if ttl is not None and not isinstance(ttl, (TTL, Mapping)):
            raise TypeError(
                "ttl must be a dict of TTL settings ({'default_ttl': minutes, ...}) or a TTL, "
                f"got {ttl!r}"
            )
        schema = schemas.check_name(options.get("schema"))
        if url is not None and schema is not None:
            schemas.check_backend(schema, engines.parse_url(url).get_backend_name())
        return Policies(shallow=options.get("shallow", False), ttl=TTL.of(ttl), clock=clock)

    @property
    def _opts(self) -> ops.Options:
        # Built again when the serde or policies are others: `with_allowlist`
        # copies the saver with a new serde.
        opts: ops.Options | None = self.__dict__.get("_built_opts")
        if opts is None or opts.serde is not self.serde or opts.policies is not self.policies:
            opts = self.__dict__["_built_opts"] = ops.Options(self.serde, self.policies)
        return opts

    def _ttl(self) -> TTL:
        if self.policies.ttl is None:
            raise ValueError(
                "this saver has no TTL: create it with ttl={'default_ttl': minutes, ...}"
            )
        return self.policies.ttl

    def _sweep_interval(self, minutes: float | None) -> float:
        """Seconds between background sweeps."""
        ttl = self._ttl()  # a sweeper needs a TTL to sweep by
        minutes = minutes or ttl.sweep_interval_minutes
        if not minutes or minutes <= 0:
            raise ValueError(
                "no sweep interval: pass interval_minutes=... or set "
                "ttl={'sweep_interval_minutes': ...}"
            )
        return minutes * 60

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


class Sweep:
    """The bookkeeping of one TTL sweep, shared by both savers: which batch
    (transaction) sizes to run, how many threads were handled, when to stop.

    Each saver only runs the batches: ``for size in sweep:
    sweep.done(run(size))``, then ``sweep.handled``.
    """

    def __init__(self, limit: int, progress: Callable[[int], None] | None) -> None:
        self.remaining = limit
        self.progress = progress
        self.handled = 0

    def __iter__(self) -> Iterator[int]:
        while self.remaining > 0:
            yield min(SWEEP_BATCH, self.remaining)

    def done(self, handled: int) -> None:
        """Record a batch. Only an empty batch means nothing is left: a short
        one may have skipped threads another sweeper had locked (MySQL's
        InnoDB can lock more rows than a batch takes), which that sweeper
        may then leave expired, to be taken by the next batch."""
        self.handled += handled
        self.remaining = self.remaining - handled if handled else 0
        if self.progress is not None:
            self.progress(self.handled)


def _with_close_match(name: str, from_url: bool) -> str:
    """An unknown option's name, with the option it is likely a typo of
    (``shalow``: ``shallow``; in `from_url`, ``engine_kwarg``:
    ``engine_kwargs``)."""
    names = (*OPTION_NAMES, "engine_kwargs") if from_url else OPTION_NAMES
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.7)
    return f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)


def check_prune(thread_ids: Sequence[str], strategy: str) -> list[str]:
    """Validate `prune`'s arguments; the thread ids as a list."""
    if isinstance(thread_ids, str):
        raise TypeError("prune takes a sequence of thread ids, not one string: prune([thread_id])")
    if strategy not in PRUNE_STRATEGIES:
        raise ValueError(f"unknown prune strategy {strategy!r}; use one of {PRUNE_STRATEGIES}")
    return [str(t) for t in thread_ids]
