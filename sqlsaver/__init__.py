"""sqlsaver: a LangGraph checkpointer on SQLAlchemy, for SQLite, PostgreSQL
and MySQL/MariaDB, sync (`SQLSaver`) and async (`AsyncSQLSaver`)."""

from importlib import metadata as _metadata

from sqlsaver.aio import AsyncSQLSaver
from sqlsaver.base import SaverOptions
from sqlsaver.execution.limits import ValueTooLargeError
from sqlsaver.migrate import (
    SchemaError,
    SchemaMissingError,
    SchemaNotReadyError,
    SchemaTooNewError,
)
from sqlsaver.models import Base, BlobModel, CheckpointModel, ThreadModel, WriteModel
from sqlsaver.policies import TTL
from sqlsaver.saver import SQLSaver
from sqlsaver.transfer import CopyError, CopyReport, UnknownSourceError, copy_threads

try:
    __version__: str = _metadata.version("sqlsaver")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "AsyncSQLSaver",
    "Base",
    "BlobModel",
    "CheckpointModel",
    "CopyError",
    "CopyReport",
    "SQLSaver",
    "SaverOptions",
    "SchemaError",
    "SchemaMissingError",
    "SchemaNotReadyError",
    "SchemaTooNewError",
    "TTL",
    "UnknownSourceError",
    "ThreadModel",
    "ValueTooLargeError",
    "WriteModel",
    "copy_threads",
]
