"""What sqlsaver ships: its version, and a source distribution with which
the project can be tested, benchmarked and documented, not only built.

(The wheel, installed in a clean environment, is in test_migrations.py.)
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import sqlsaver

REPO = Path(__file__).resolve().parents[1]


def test_version_is_the_installed_distributions() -> None:
    assert sqlsaver.__version__ == importlib.metadata.version("sqlsaver")
    assert sqlsaver.__version__[0].isdigit()


def test_version_of_a_source_tree_without_metadata() -> None:
    # As when the checkout is only on sys.path: no installed distribution.
    script = (
        "import importlib.metadata as m\n"
        "def missing(name):\n"
        "    raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import sqlsaver\n"
        "print(sqlsaver.__version__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0+unknown"


def test_sdist_holds_the_whole_project(tmp_path: Path) -> None:
    # Built from a copy of what git tracks (plus the files of this change
    # not yet committed): no stale egg-info, build/ or databases of the
    # checkout can leak in or mask a missing MANIFEST.in line.
    source = tmp_path / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "build", "dist", "*.egg-info", ".*venv*", ".nox", "__pycache__", ".*_cache"
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (archive,) = (tmp_path / "dist").glob("sqlsaver-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    expected = {
        "LICENSE",
        "README.md",
        "alembic.ini",
        "noxfile.py",
        "mkdocs.yml",
        "docs/hooks.py",
        "benchmarks/README.md",
        "pyproject.toml",
        "benchmarks/bench.py",
        "scripts/pgbouncer.sh",
        "scripts/galera.sh",
        "tests/cluster/test_galera.py",
        "tests/conftest.py",
        "tests/helpers.py",
        "tests/test_packaging.py",
        "migrations/env.py",
        "migrations/script.py.mako",
        "sqlsaver/py.typed",
    }
    expected |= {str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")}
    expected |= {str(p.relative_to(REPO)) for p in (REPO / "tests" / "upstream").glob("*.py")}
    expected |= {str(p.relative_to(REPO)) for p in (REPO / "migrations" / "versions").glob("*.py")}
    assert expected - names == set()
    assert any(name.startswith("docs/") for name in names)
    assert any(name.startswith("tests/upstream/") for name in names)
    # Nothing of a local run.
    assert not [n for n in names if n.endswith((".db", ".pyc")) or "__pycache__" in n]
    license_text = (REPO / "LICENSE").read_text()
    assert "MIT License" in license_text
    assert "Copyright (c) 2026 the sqlsaver authors" in license_text
