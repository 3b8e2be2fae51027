"""Fixtures: a fresh PostgreSQL database per test and the CLI run from a project directory.

The PostgreSQL server comes from ``TEST_POSTGRES_URL`` (default: the local
server). An unreachable server fails the test with a clear message; it is
never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pymysql
import pytest
import sqlalchemy
from faults import free_port
from support import Cli, mysql_connect, prometheus_server


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """The CLI, run from a fresh project directory ``tmp_path / 'project'``."""
    return Cli(tmp_path / "project")


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A URL of the PostgreSQL server the tests use; fails clearly when it is down."""
    url = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL at {url} is unreachable: {error}. Start it, or point TEST_POSTGRES_URL at one.",
            pytrace=False,
        )
    return url


@pytest.fixture
def pg_databases(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """A factory of new, empty databases (all dropped after the test); each call returns a ``postgresql://`` URL."""
    created: list[str] = []

    def create() -> str:
        name = f"mr_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return sqlalchemy.make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)

    yield create
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_databases: Callable[[], str]) -> str:
    """A new, empty database for this test (dropped after it): its ``postgresql://`` URL."""
    return pg_databases()


@pytest.fixture(scope="session")
def mysql_admin_url() -> str:
    """A URL of the MariaDB/MySQL server the tests use (``TEST_MYSQL_URL``); fails clearly when it is down."""
    url = os.environ.get("TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    try:
        mysql_connect(url).close()
    except pymysql.err.OperationalError as error:
        pytest.fail(
            f"MariaDB at {url} is unreachable: {error}. Start it, or point TEST_MYSQL_URL at one.", pytrace=False
        )
    return url


@pytest.fixture
def mysql_databases(mysql_admin_url: str) -> Iterator[Callable[[], str]]:
    """A factory of new, empty MariaDB databases (all dropped after the test); each call returns a ``mysql://`` URL."""
    created: list[str] = []

    def create() -> str:
        name = f"mr_test_{uuid.uuid4().hex[:12]}"
        with contextlib.closing(mysql_connect(mysql_admin_url)) as admin, admin.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE `{name}`")
        created.append(name)
        return sqlalchemy.make_url(mysql_admin_url).set(database=name).render_as_string(hide_password=False)

    yield create
    with contextlib.closing(mysql_connect(mysql_admin_url)) as admin, admin.cursor() as cursor:
        for name in created:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mysql_url(mysql_databases: Callable[[], str]) -> str:
    """A new, empty MariaDB database for this test (dropped after it): its ``mysql://`` URL."""
    return mysql_databases()


@pytest.fixture(params=["postgresql", "mariadb", "sqlite"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database on each of the three servers: PostgreSQL, MariaDB, and a SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    if request.param == "mariadb":
        return str(request.getfixturevalue("mysql_url"))
    return f"sqlite:///{tmp_path / 'app.sqlite3'}"


@pytest.fixture
def pushgateway() -> Iterator[str]:
    """A real Pushgateway (Debian's prometheus-pushgateway) on a loopback port: its base URL."""
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")
    port = free_port()
    with tempfile.TemporaryDirectory() as storage:
        argv = [binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={storage}/metrics"]
        with prometheus_server(argv, port, ready_within=15) as url:
            yield url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the figures a test measured for the log of the run (the plan flag corpus's recall and false flags)."""
    import flag_corpus  # noqa: PLC0415

    if flag_corpus.FIGURES:
        terminalreporter.section("figures")
        for line in flag_corpus.FIGURES:
            terminalreporter.write_line(line)
