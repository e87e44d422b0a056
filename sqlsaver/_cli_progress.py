"""Progress of the CLI's long work (upgrade, downgrade, sweep, copy) on stderr: a
bar redrawn in place on a terminal, plain lines otherwise (a log, a CI job),
with no dependency for either."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

WIDTH = 20


class Progress:
    """Reports ``done`` of ``total`` (None: unknown) steps of some work."""

    def __init__(self, unit: str, stream: TextIO | None = None) -> None:
        self.unit = unit
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty()
        self._drawn = False

    def update(self, done: int, total: int | None, line: str) -> None:
        """On a terminal, redraw the bar; otherwise write ``line``."""
        if not self.bar:
            print(line, file=self.stream, flush=True)
            return
        if total:
            filled = WIDTH * min(done, total) // total
            drawn = f"[{'#' * filled}{'-' * (WIDTH - filled)}] {done}/{total} {self.unit}"
        else:
            drawn = f"{done} {self.unit}"
        # Padded, so that a shorter text leaves nothing of a longer one.
        self.stream.write(f"\r{drawn:<{WIDTH + 40}}")
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """End the bar's line, so the next output starts on a line of its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class MigrationProgress(logging.Handler):
    """Alembic's "Running upgrade 0001 -> 0002, ..." records, one per
    revision, as `Progress` of ``total`` revisions."""

    def __init__(self, total: int | None) -> None:
        super().__init__(logging.INFO)
        self.progress = Progress("revisions")
        self.total = total
        self.done = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not message.startswith("Running "):
            return
        self.done += 1
        self.progress.update(self.done, self.total, message)


class SweepProgress:
    """A sweep's running totals (one per transaction) as `Progress`: in plain
    lines, each total but the last, which the command's own final line says."""

    def __init__(self, limit: int | None) -> None:
        self.progress = Progress("expired threads")
        self.limit = limit
        self._pending: int | None = None

    def __call__(self, total: int) -> None:
        if self.progress.bar:
            self.progress.update(total, self.limit, "")
            return
        if self._pending is not None and self._pending != total:
            line = f"swept {self._pending} expired threads so far"
            print(line, file=self.progress.stream, flush=True)
        self._pending = total

    def finish(self) -> None:
        self.progress.finish()


class CopyProgress:
    """A copy's running totals (`sqlsaver.transfer.CopyReport`) as
    `Progress`: on a terminal a count redrawn in place; otherwise a line at
    most once a second."""

    def __init__(self) -> None:
        self.progress = Progress("checkpoints")
        self._last = 0.0

    def __call__(self, report: Any) -> None:
        now = time.monotonic()
        if not self.progress.bar and now - self._last < 1:
            return
        self._last = now
        line = f"{report.done} of {report.total} checkpoints copied or found so far"
        self.progress.update(report.done, report.total, line)

    def finish(self) -> None:
        self.progress.finish()
