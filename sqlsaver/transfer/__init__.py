"""Moving threads between databases: `copy_threads` (and ``python -m
sqlsaver copy``), from sqlsaver or an official saver's tables into sqlsaver."""

from sqlsaver.transfer.copy import CopyError, CopyReport, copy_threads
from sqlsaver.transfer.sources import UnknownSourceError

__all__ = ["CopyError", "CopyReport", "UnknownSourceError", "copy_threads"]
