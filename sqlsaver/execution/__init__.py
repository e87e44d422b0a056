"""How statements run: the only code of sqlsaver below SQLAlchemy's public API.

- `runner`: which connection and transaction an operation runs in, retries,
  the writer's lock, the schema check; sync and async alike.
- `plan`: how a write of rows runs (one statement, a script, a transaction).
- `transactions`: the transactions sqlsaver begins itself, and reads on one
  snapshot.
- `kept`: connections of sqlsaver's own engines kept between operations.
- `prepared`: hot statements compiled once and run on the driver's cursor;
  `execute` for the others. Every statement of an operation goes through
  it (migrations run Alembic's own).
- `psycopg_raw`: psycopg's raw cursors (``$n`` placeholders), and its errors
  that mean a lost connection.
- `limits`: values too large for MySQL's ``max_allowed_packet``.
- `sqlalchemy_private`: the SQLAlchemy attributes below its API we read.
"""
