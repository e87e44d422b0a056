"""`setup()` on a fresh database says nothing: no output, no log record, no
warning. (MariaDB warns of a primary key's name, which it ignores, and
asyncmy logged each such warning: five lines at an app's first setup.)"""

from __future__ import annotations

import logging
import warnings

import pytest
from conftest import Backend
from sqlalchemy import inspect
from test_migrations import engine_on, fresh, schema_diff

from sqlsaver import AsyncSQLSaver, SQLSaver, migrate

__all__ = ["fresh"]  # the fixture, imported for pytest


@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_setup_of_a_fresh_database_is_silent(
    fresh: Backend,
    driver: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if driver == "async":
            async with AsyncSQLSaver.from_url(fresh.async_url) as aio_saver:
                await aio_saver.setup()
        else:
            with SQLSaver.from_url(fresh.sync_url) as saver:
                saver.setup()
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in noisy] == []
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr() == ("", "")
    # The same schema as ever: every table, at head, as the models say.
    with engine_on(fresh.sync_url) as engine:
        assert migrate.current(engine) == migrate.HEAD
        assert schema_diff(engine) == []
        found = inspect(engine)
        for table in ("sqlsaver_checkpoints", "sqlsaver_threads", migrate.VERSION_TABLE):
            assert found.get_pk_constraint(table)["constrained_columns"], table
        if fresh.name != "mysql":  # MySQL names every primary key PRIMARY
            names = {t: found.get_pk_constraint(t)["name"] for t in ("sqlsaver_checkpoints",)}
            assert names == {"sqlsaver_checkpoints": "pk_sqlsaver_checkpoints"}
