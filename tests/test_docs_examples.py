"""The examples in README.md, docs/ and the API's docstrings run, so that
they cannot rot.

Every ```` ```python ```` block of a page (or of a docstring of
`DOCUMENTED`'s, which the API reference shows) runs, in the page's order, in one
namespace (as pasted into one Python session), in a temporary folder, so
``sqlite:///checkpoints.db`` makes a file there. A block that names a
PostgreSQL or MySQL URL runs against the test servers (`conftest.POSTGRES`,
`conftest.MYSQL`): the URL keeps its driver, and its user, host and database
become the test server's. Every ``python -m sqlsaver ...`` line of a
```` ```bash ```` block must be a command the CLI's parser takes.
"""

from __future__ import annotations

import inspect
import re
import shlex
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import MYSQL, POSTGRES
from helpers import require_server
from sqlalchemy import make_url

import sqlsaver
from sqlsaver import base, migrate, models, policies, schemas
from sqlsaver.__main__ import parser
from sqlsaver.aio import AsyncSQLSaver
from sqlsaver.saver import SQLSaver
from sqlsaver.transfer import copy as transfer_copy

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), ROOT / "benchmarks/README.md"])
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
# A database URL in an example: scheme (with its driver) and the rest.
SERVER_URL = re.compile(r"\b(postgresql|mysql|mariadb)(\+\w+)?://[^\s\"'`]+")
SERVERS = {"postgresql": ("postgres", POSTGRES), "mysql": ("mysql", MYSQL)}
SERVERS["mariadb"] = SERVERS["mysql"]


# What the API reference (docs/reference/) renders the docstrings of.
DOCUMENTED: list[ModuleType | type] = [sqlsaver, SQLSaver, AsyncSQLSaver, migrate, base, models]
DOCUMENTED += [policies, schemas, transfer_copy]


def fenced(text: str, language: str) -> list[tuple[int, str]]:
    """The fenced blocks in ``language`` of ``text``, with their first line."""
    return [
        (text.count("\n", 0, found.start()) + 2, textwrap.dedent(found.group(2)))
        for found in FENCE.finditer(textwrap.dedent(text))
        if found.group(1) == language
    ]


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """The page's fenced blocks in ``language``, with their first line."""
    return fenced(page.read_text(), language)


def docstrings() -> dict[str, str]:
    """The docstrings of `DOCUMENTED` and of their members, by name."""
    found: dict[str, str] = {}
    for owner in DOCUMENTED:
        members = [(owner.__name__, owner)] + [
            (f"{owner.__name__}.{name}", member) for name, member in vars(owner).items()
        ]
        for name, member in members:
            member = getattr(member, "__func__", member)  # a classmethod's function
            home = owner.__name__ if isinstance(owner, ModuleType) else owner.__module__
            if member is owner or getattr(member, "__module__", None) == home:  # its own
                doc = inspect.getdoc(member)
                if doc and "```python" in doc:
                    found[name] = doc
    return found


def on_test_servers(code: str) -> tuple[str, set[str]]:
    """``code`` with every server URL pointed at the test server of its
    kind (same driver); the kinds it needs."""
    needed: set[str] = set()

    def point(found: re.Match[str]) -> str:
        name, where = SERVERS[found.group(1)]
        needed.add(name)
        driver = found.group(1) + (found.group(2) or "")
        return str(make_url(f"{driver}://{where}").render_as_string(hide_password=False))

    return SERVER_URL.sub(point, code), needed


def require(servers: set[str]) -> None:
    """Fail (in CI) or skip when a server the page needs is unreachable."""
    for name in sorted(servers):
        where = POSTGRES if name == "postgres" else MYSQL
        require_server(name, f"{'postgresql' if name == 'postgres' else 'mysql+pymysql'}://{where}")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def run_examples(name: str, examples: list[tuple[int, str]]) -> None:
    """Run the examples in order, in one namespace (as one Python session)."""
    pointed = [(line, *on_test_servers(code)) for line, code in examples]
    require(set().union(*(needed for _, _, needed in pointed)))
    namespace: dict[str, Any] = {"__name__": "example"}
    for line, code, _ in pointed:
        where = f"{name}:{line}"
        try:
            exec(compile(code, where, "exec", dont_inherit=True), namespace)
        except Exception as error:
            raise AssertionError(f"the example at {where} failed: {error!r}") from error


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=page_id)
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block of the page runs, after the ones before it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LANGGRAPH_AES_KEY", raising=False)
    run_examples(page_id(page), blocks(page, "python"))


@pytest.mark.parametrize("name", sorted(docstrings()))
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Python block of a docstring the API reference shows runs."""
    monkeypatch.chdir(tmp_path)
    run_examples(name, fenced(docstrings()[name], "python"))


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")], ids=page_id)
def test_cli_examples_parse(page: Path) -> None:
    """Every ``python -m sqlsaver`` command shown is one the CLI takes."""
    for line, code in blocks(page, "bash"):
        for command in code.splitlines():
            command = command.split("#", 1)[0].strip()
            if not command.startswith("python -m sqlsaver"):
                continue
            argv = shlex.split(command)[3:]
            try:
                parser().parse_args(argv)
            except SystemExit as refused:
                raise AssertionError(f"{page_id(page)}:{line}: {command!r} is refused") from refused


def test_every_page_with_examples_is_checked() -> None:
    """The pages above are every markdown page of the project's (but the
    upstream test folder's), so a new one cannot be left out."""
    found = {
        p
        for p in ROOT.rglob("*.md")
        if not any(part.startswith(".") or part in ("site", "build") for part in p.parts)
        and "upstream" not in p.parts
        and "results" not in p.parts
    }
    assert found <= set(PAGES), sorted(map(page_id, found - set(PAGES)))
