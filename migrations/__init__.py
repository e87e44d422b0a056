"""sqlsaver's Alembic environment (installed as ``sqlsaver.migrations``)."""
