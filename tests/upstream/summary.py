"""Per-URL-kind counts of a `nox -s langgraph` run, from its JUnit XML files.

Exits 1 if any test failed or errored (or none ran), so the session fails.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter

KINDS = ("sqlite", "psycopg", "pymysql", "aiosqlite", "asyncpg", "asyncmy")


def main(paths: list[str]) -> int:
    counts: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    failed: list[str] = []
    cases = [case for path in paths for case in ET.parse(path).iter("testcase")]
    for case in cases:
        match = re.search(r"sqlsaver_(\w+?)(?:[-\]])", case.get("name", "") + "]")
        kind = match.group(1) if match else "other"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                failed.append(f"{case.get('classname')}::{case.get('name')}")
            elif child.tag == "skipped":
                outcome = "skipped"
        counts.setdefault(kind, Counter())[outcome] += 1
    print(f"{'URL kind':<10} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for kind, count in counts.items():
        print(f"{kind:<10} {count['passed']:>7} {count['failed']:>7} {count['skipped']:>8}")
    for name in failed:
        print(f"FAILED {name}")
    total = sum(sum(c.values()) for c in counts.values())
    return 1 if failed or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
