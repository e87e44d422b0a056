"""sqlsaver: a LangGraph checkpointer on SQLAlchemy, for SQLite, PostgreSQL
and MySQL/MariaDB, sync (`SQLSaver`) and async (`AsyncSQLSaver`)."""

from sqlsaver.aio import AsyncSQLSaver
from sqlsaver.migrate import SchemaError, SchemaNotReadyError, SchemaTooNewError
from sqlsaver.models import Base, BlobModel, CheckpointModel, WriteModel
from sqlsaver.saver import SQLSaver

__all__ = [
    "AsyncSQLSaver",
    "Base",
    "BlobModel",
    "CheckpointModel",
    "SQLSaver",
    "SchemaError",
    "SchemaNotReadyError",
    "SchemaTooNewError",
    "WriteModel",
]
