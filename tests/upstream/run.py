"""Run LangGraph's own graph tests on sqlsaver (`nox -s langgraph`).

1. Fetch the sdist of the installed langgraph (its ``tests/`` folder ships in
   it) into a cache folder, once per version.
2. Copy it to a scratch folder and append one line to its ``tests/conftest.py``
   that rebinds ``sync_checkpointer`` / ``async_checkpointer`` to sqlsaver
   (`sqlsaver_fixtures`). No upstream test is changed.
3. Run every test file that uses those fixtures, only their sqlsaver cases,
   on four pytest-xdist workers; then, alone, the tests that assert
   wall-clock times; then once more, alone, the tests that failed in either.
4. Print passed / failed / skipped per URL kind (`summary`); exit 1 on any
   failure that is not a pass when run alone.

Usage: ``python tests/upstream/run.py CACHE_DIR SCRATCH_DIR [pytest args...]``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

import summary

HERE = Path(__file__).resolve().parent
USES_CHECKPOINTER = re.compile(r"\b(sync|async)_checkpointer\b")
TEST_FUNCTION = re.compile(r"^(?:async )?def (test_\w+)(.*?)(?=^(?:async )?def |\Z)", re.M | re.S)
WORKERS = "4"


def unpacked_sdist(cache: Path) -> Path:
    """The installed langgraph's sdist, unpacked under ``cache``."""
    release = version("langgraph")
    source = cache / f"langgraph-{release}"
    if not (source / "tests" / "conftest.py").exists():
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-binary",
                    ":all:",
                    "--no-deps",
                    "--dest",
                    download,
                    f"langgraph=={release}",
                ],
                check=True,
            )
            (archive,) = Path(download).glob("langgraph-*.tar.gz")
            with tarfile.open(archive) as tar:
                tar.extractall(cache, filter="data")
    return source


def timed_tests(files: list[Path]) -> list[str]:
    """Tests that assert wall-clock times (upstream's ``FloatBetween``):
    beside other workers on a busy machine they miss by tenths of a second,
    whatever the saver."""
    return sorted(
        {
            name
            for path in files
            for name, body in TEST_FUNCTION.findall(path.read_text())
            if "FloatBetween(" in body
        }
    )


def main(cache: Path, scratch: Path, pytest_args: list[str]) -> int:
    cache, scratch = cache.resolve(), scratch.resolve()
    work = scratch / "langgraph"
    shutil.rmtree(work, ignore_errors=True)
    # Its tests and their pytest settings, not its source: the tests import
    # the installed langgraph.
    source = unpacked_sdist(cache)
    shutil.copytree(source / "tests", work / "tests")
    shutil.copy(source / "pyproject.toml", work)
    conftest = work / "tests" / "conftest.py"
    conftest.write_text(
        conftest.read_text() + "\n\nfrom sqlsaver_fixtures import *  # noqa: E402,F403\n"
    )
    files = sorted(
        p for p in (work / "tests").glob("test_*.py") if USES_CHECKPOINTER.search(p.read_text())
    )
    timed = " or ".join(timed_tests(files)) or "no_such_test"
    among, alone, again = (scratch / f"junit-{name}.xml" for name in ("among", "alone", "again"))
    env = {**os.environ, "PYTHONPATH": str(HERE), "NO_DOCKER": "true"}
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    common = [*pytest, *(str(p.relative_to(work)) for p in files)]
    passes = [
        # 1. Among workers: all but the timed tests.
        [*common, "-n", WORKERS, "-k", f"sqlsaver_ and not ({timed})", f"--junitxml={among}"],
        # 2. Alone: the timed tests.
        [*common, "-k", f"sqlsaver_ and ({timed})", f"--junitxml={alone}"],
    ]
    for command in passes:
        if not _pytest([*command, *pytest_args], work, env):
            return 2
    # 3. Alone, once more: what failed in 1 or 2, to tell a failure from a
    #    race lost on a busy machine (a task sleeping 10 ms to order its
    #    output, a 0.1 s tolerance). The summary names each one.
    failed = summary.failed_ids(among, work) + summary.failed_ids(alone, work)
    again.unlink(missing_ok=True)
    if failed and not _pytest([*pytest, *failed, f"--junitxml={again}", *pytest_args], work, env):
        return 2
    return summary.main(among, alone, again)


def _pytest(command: list[str], work: Path, env: dict[str, str]) -> bool:
    """Run pytest; False if it could not run its tests at all (0: passed,
    1: some failed, 5: none selected; the summary judges)."""
    return subprocess.run(command, cwd=work, env=env).returncode in (0, 1, 5)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
