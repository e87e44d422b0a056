"""MkDocs hook: the command-line reference, rendered at build time.

`reference/cli.md` holds the marker ``<!-- cli-help -->``; this hook replaces
it with the ``--help`` of ``python -m sqlsaver`` and of each of its
subcommands, as the parser that `sqlsaver.__main__.parser()` returns formats
them. The page therefore cannot drift from the CLI. It relies on nothing but
that function returning an `argparse.ArgumentParser` with subparsers.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from typing import Any

MARKER = "<!-- cli-help -->"
PAGE = "reference/cli.md"
WIDTH = 88  # columns of the rendered help, whatever the terminal building it


def _help(parser: argparse.ArgumentParser) -> str:
    """``parser``'s help at a fixed width, in its own formatter class."""
    parser.formatter_class = functools.partial(parser.formatter_class, width=WIDTH)
    if hasattr(parser, "color"):  # Python 3.14+: never ANSI colours in a page
        parser.color = False
    return parser.format_help().rstrip()


def _block(title: str, parser: argparse.ArgumentParser, heading: str) -> str:
    return f"{heading} {title}\n\n```text\n{_help(parser)}\n```\n"


def cli_reference() -> str:
    """The markdown that replaces the marker: the top-level help, then one
    section per subcommand, in the parser's order."""
    import sqlsaver.__main__

    # Reloaded: under `mkdocs serve` an edit of the CLI shows on the next build.
    top = importlib.reload(sqlsaver.__main__).parser()
    sections = [f"```text\n{_help(top)}\n```\n"]
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sections.append(_block(f"`{name}`", sub, "##"))
    if len(sections) == 1:
        raise RuntimeError("sqlsaver.__main__.parser() has no subcommands")
    return "\n".join(sections)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise RuntimeError(f"{PAGE} lost its {MARKER} marker")
    return markdown.replace(MARKER, cli_reference())
