"""URLs that SQLAlchemy accepts or almost accepts, but sqlsaver cannot use
as they are: `SQLSaver.from_url` and `AsyncSQLSaver.from_url` say what to
write instead, and never show a URL's password."""

from __future__ import annotations

import importlib.util

import pytest

from sqlsaver import AsyncSQLSaver, SQLSaver

SAVERS = [SQLSaver, AsyncSQLSaver]


@pytest.mark.parametrize("saver", SAVERS)
@pytest.mark.parametrize("scheme", ["postgres", "postgres+asyncpg"])
def test_postgres_scheme_says_postgresql(saver: type, scheme: str) -> None:
    # The DATABASE_URL of Heroku, Render, Fly and others.
    with pytest.raises(ValueError) as error:
        saver.from_url(f"{scheme}://app:s3cret@db.example:5432/app")
    message = str(error.value)
    assert "no 'postgres://' scheme" in message
    assert "postgresql+psycopg://" in message and "postgresql+asyncpg://" in message
    assert "s3cret" not in message and "app:***@db.example" in message


@pytest.mark.skipif(
    importlib.util.find_spec("MySQLdb") is not None,
    reason="mysqlclient is installed: mysql:// works as it is",
)
@pytest.mark.parametrize("saver", SAVERS)
@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_mysql_without_a_driver_names_pymysql(saver: type, scheme: str) -> None:
    # PyMySQL is installed (sqlsaver[mysql]); SQLAlchemy's default is not.
    assert importlib.util.find_spec("pymysql") is not None
    with pytest.raises(ValueError) as error:
        saver.from_url(f"{scheme}://root:s3cret@db.example/app")
    message = str(error.value)
    assert f"'{scheme}://' asks for SQLAlchemy's default driver" in message
    assert "mysql+pymysql://" in message and "mysql+asyncmy://" in message
    assert "s3cret" not in message


@pytest.mark.parametrize("saver", SAVERS)
def test_unknown_scheme_lists_the_urls_sqlsaver_takes(saver: type) -> None:
    with pytest.raises(ValueError) as error:
        saver.from_url("oracle+nosuch://u:s3cret@h/d")
    message = str(error.value)
    assert "sqlsaver takes SQLAlchemy URLs" in message and "s3cret" not in message
