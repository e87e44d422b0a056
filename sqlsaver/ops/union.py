"""The rows of a UNION, by name.

A statement that reads several kinds of rows at once (a checkpoint, its
writes, its channel values) is a UNION ALL of one branch per kind, over one
`Layout` of named columns; each branch fills the columns its kind lacks
with NULLs. Rows are then read by attribute (`Prepared.rows` names them by
the first branch's labels), whichever branch they came from.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, cast, null, select, type_coerce


def named(columns: Iterable[Any], prefix: str = "") -> dict[str, Any]:
    """Columns by their names (with ``prefix``), for `Layout.branch`."""
    return {f"{prefix}{c.name}": c for c in columns}


class Layout:
    """The columns of a UNION's rows, by name, in order, with their SQL
    types (that of a NULL filling one in)."""

    def __init__(self, types: Mapping[str, Any], cast: Collection[str] = ()) -> None:
        self.types = dict(types)
        # The NULLs of these are CAST in SQL (see `columns`).
        self.cast = frozenset(cast)
        assert self.cast <= self.types.keys()

    def columns(self, given: Mapping[str, Any]) -> list[ColumnElement[Any]]:
        """Every column of the layout, in order, labelled by its name: those
        ``given`` (by name), NULL for the others.

        A NULL is typed (`type_coerce`, no SQL of its own): in the first
        branch, its type decides how the column is read. It is a CAST where
        the layout says (``cast``): PostgreSQL types a union's columns
        branch by branch, and NULLs in the first two of three would be text
        where the third has, say, bytea. Labelled: a compound's ORDER BY
        names its columns (SQLite), and `Prepared.rows` names rows by them.
        """
        assert given.keys() <= self.types.keys(), given.keys() - self.types.keys()
        out = []
        for name, type_ in self.types.items():
            if name in given:
                column = given[name]
            elif name in self.cast:
                column = cast(null(), type_)
            else:
                column = type_coerce(null(), type_)
            out.append(column.label(name))
        return out

    def getter(self, *names: str) -> Callable[[Sequence[Any]], Any]:
        """The getter of these columns of a plain row of the layout (as
        `Prepared.rows` gives it with ``named=False``): a C itemgetter
        found by name, for rows read by the thousand, where naming each
        row costs more than reading it (a `list` page of 50 checkpoints
        with 30 writes each: 10-20% slower on SQLite)."""
        order = list(self.types)
        return operator.itemgetter(*(order.index(name) for name in names))

    def branch(self, given: Mapping[str, Any]) -> Select[Any]:
        """A SELECT of the layout's `columns`: one branch of the UNION."""
        return select(*self.columns(given))
