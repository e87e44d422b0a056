"""Per-URL-kind counts of a `nox -s langgraph` run, from its JUnit XML files
(`run`): the tests run among workers, the timed tests run alone, and the
failures of either run once more alone.

A test that failed first and passed when run again alone counts as passed,
and is named: it lost a race on a busy machine. Exits 1 if any test failed
both times, or none ran.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

KINDS = ("sqlite", "psycopg", "pymysql", "aiosqlite", "asyncpg", "asyncmy")


def outcomes(path: Path) -> dict[str, str]:
    """``{test id: "passed" | "failed" | "skipped"}`` of one JUnit file."""
    found: dict[str, str] = {}
    if not path.exists():
        return found
    for case in ET.parse(path).iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        found[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return found


def failed_ids(path: Path, root: Path) -> list[str]:
    """pytest node ids (``tests/test_x.py::Class::test[param]``) of the
    tests that failed in one JUnit file, to run them again."""
    ids = []
    for test, outcome in outcomes(path).items():
        if outcome != "failed":
            continue
        classname, name = test.split("::", 1)
        parts = classname.split(".")
        # The longest prefix that is a module; the rest are classes.
        for cut in range(len(parts), 0, -1):
            module = Path(*parts[:cut]).with_suffix(".py")
            if (root / module).exists():
                ids.append("::".join([module.as_posix(), *parts[cut:], name]))
                break
        else:
            raise SystemExit(f"cannot find the module of {test}")
    return ids


def main(among: Path, alone: Path, again: Path) -> int:
    first = {**outcomes(among), **outcomes(alone)}
    rerun = outcomes(again)
    final = {**first, **rerun}
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for test, outcome in final.items():
        match = re.search(r"\[sqlsaver_([a-z]+)", test)
        counts.setdefault(match.group(1) if match else "other", Counter())[outcome] += 1
    print(f"{'URL kind':<10} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for kind, count in counts.items():
        print(f"{kind:<10} {count['passed']:>7} {count['failed']:>7} {count['skipped']:>8}")
    for test, outcome in sorted(rerun.items()):
        if outcome == "passed" and first.get(test) == "failed":
            print(f"passed when run again alone (failed first): {test}")
    failed = sorted(test for test, outcome in final.items() if outcome == "failed")
    for test in failed:
        print(f"FAILED {test}")
    return 1 if failed or not final else 0


if __name__ == "__main__":
    sys.exit(main(*map(Path, sys.argv[1:4])))
