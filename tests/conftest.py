"""Fixtures: a fresh PostgreSQL database per test and the CLI run from a project directory.

The PostgreSQL server comes from ``TEST_POSTGRES_URL`` (default: the local
server). An unreachable server fails the test with a clear message; it is
never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from support import Cli


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
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database for this test (dropped after it): its ``postgresql://`` URL."""
    name = f"mr_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = sqlalchemy.make_url(pg_admin_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    with psycopg.connect(pg_admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
