"""Every `alembic init` template works unmodified, on PostgreSQL, SQLite and MariaDB.

Each project is made by the installed Alembic's own `alembic init -t TEMPLATE`, in a temporary
directory, so a new Alembic release is tested as users get it. Three revisions are added, and
env.py changes in one line only: `target_metadata` comes from an application package beside it
(found through `prepend_sys_path`).
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy
from support import REVISION, Cli, mysql_query, query, rev_id, wait_until

ALEMBIC = Path(sys.executable).parent / "alembic"
TEMPLATES = ["generic", "async", "pyproject", "pyproject_async"]
ASYNC_DRIVER = {"postgresql": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite", "mysql": "mysql+aiomysql"}

MODELS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "account"
    id = sa.Column(sa.Integer, primary_key=True)
"""


def alembic_init(directory: Path, template: str, *, with_models: bool = True) -> Path:
    """`alembic init -t TEMPLATE migrations` in ``directory``, three revisions, models imported by env.py."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(ALEMBIC), "init", "-t", template, "migrations"], cwd=directory, check=True, capture_output=True, timeout=60
    )
    env_py = directory / "migrations" / "env.py"
    text = env_py.read_text()
    if with_models:
        assert "target_metadata = None" in text
        models = "from myapp.models import Base\ntarget_metadata = Base.metadata"
        env_py.write_text(text.replace("target_metadata = None", models))
    (directory / "myapp").mkdir()
    (directory / "myapp" / "__init__.py").write_text("")
    (directory / "myapp" / "models.py").write_text(MODELS)
    versions = directory / "migrations" / "versions"
    versions.mkdir(exist_ok=True)
    for number in (1, 2, 3):
        body = f'op.create_table("t_{rev_id(number)}", sa.Column("id", sa.Integer))'
        if number == 1:
            body = (
                'op.create_table("applied_log", sa.Column("revision", sa.Text), sa.Column("pid", sa.Integer))\n' + body
            )
        down = rev_id(number - 1) if number > 1 else None
        (versions / f"{rev_id(number)}_r.py").write_text(
            REVISION.format(
                message=f"revision {number}", rev=rev_id(number), down=down, body=textwrap.indent(body, "    ")
            )
        )
    return directory


@pytest.fixture
def database(request: pytest.FixtureRequest, pg_url: str, mysql_url: str, tmp_path: Path) -> Callable[[str], str]:
    """The test database of the family in the test's id, as a URL with the driver the template wants."""
    family = request.node.callspec.params["family"]
    base = {"postgresql": pg_url, "mysql": mysql_url, "sqlite": f"sqlite:///{tmp_path / 'app.db'}"}[family]

    def url(template: str) -> str:
        if "async" not in template:
            return base
        parsed = sqlalchemy.make_url(base)
        return parsed.set(drivername=ASYNC_DRIVER[family]).render_as_string(hide_password=False)

    return url


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ["postgresql", "sqlite", "mysql"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_an_alembic_init_project_upgrades_checks_and_reports(
    cli: Cli, database: Callable[[str], str], template: str, family: str
) -> None:
    """upgrade (0, at head), upgrade again (no-op), check (0), current --json (at head)."""
    alembic_init(cli.cwd, template)
    env = {"MIGRATION_DATABASE_URL": database(template)}

    first = cli(env=env)
    second = cli(env=env)
    check = cli("check", env=env)
    current = cli("current", "--json", env=env)

    assert first.code == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert [e["revision"] for e in first.named("revision.applied")] == [rev_id(1), rev_id(2), rev_id(3)]
    assert second.code == 0 and second.one("upgrade.noop")
    assert check.code == 0, check.stdout
    assert json.loads(current.stdout)["to"] == [rev_id(3)]


def test_a_missing_async_driver_is_78_naming_the_package(cli: Cli) -> None:
    """asyncmy is not installed here (the tests install asyncpg, aiosqlite, aiomysql): 78, `pip install asyncmy`."""
    assert importlib.util.find_spec("asyncmy") is None, "this test needs asyncmy to be absent"
    alembic_init(cli.cwd, "async")

    result = cli(env={"MIGRATION_DATABASE_URL": "mysql+asyncmy://root@127.0.0.1/x"})

    assert result.code == 78, result.stdout
    assert "env.py's URL needs the asyncmy package: pip install asyncmy" in result.one("config.invalid")["error"]


def test_the_multidb_template_is_refused_with_78(cli: Cli, pg_url: str) -> None:
    """multidb migrates several databases from one env.py; the runner locks one: refuse, saying why."""
    alembic_init(cli.cwd, "multidb", with_models=False)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 78
    assert "several databases" in result.one("config.invalid")["error"]


@pytest.mark.parametrize("template", ["generic", "async"])
def test_sqlite_rolls_back_a_failed_revision_whole_in_both_templates(cli: Cli, tmp_path: Path, template: str) -> None:
    """Revision 2 creates its table, then fails: on SQLite (pysqlite or aiosqlite) the table is rolled back too."""
    alembic_init(cli.cwd, template)
    revision_2 = cli.cwd / "migrations" / "versions" / f"{rev_id(2)}_r.py"
    revision_2.write_text(
        revision_2.read_text().replace('    op.execute("INSERT', '    op.execute("SELEC 1")\n    op.execute("INSERT')
    )
    database = tmp_path / "app.db"
    driver = "sqlite+aiosqlite" if template == "async" else "sqlite"

    result = cli(env={"MIGRATION_DATABASE_URL": f"{driver}:///{database}"})

    assert result.code == 65, result.stdout
    assert result.one("revision.failed")["revision"] == rev_id(2)
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    assert versions == [rev_id(1)]
    assert "t_0001" in tables and "t_0002" not in tables


def test_alembic_config_may_name_pyproject_toml(cli: Cli, pg_url: str) -> None:
    """MIGRATION_ALEMBIC_CONFIG=pyproject.toml, as `alembic -c pyproject.toml`: its [tool.alembic] is used."""
    alembic_init(cli.cwd, "pyproject")

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_ALEMBIC_CONFIG": "pyproject.toml"})

    assert result.code == 0, result.stdout[-2000:]
    assert len(result.named("revision.applied")) == 3


def test_asyncpg_revisions_run_with_the_runners_session_timeouts(cli: Cli, pg_url: str) -> None:
    """asyncpg takes no libpq options: lock_timeout and statement_timeout are SET on each connection instead."""
    alembic_init(cli.cwd, "async")
    revision_1 = cli.cwd / "migrations" / "versions" / f"{rev_id(1)}_r.py"
    seen = "CREATE TABLE seen AS SELECT current_setting('lock_timeout') AS lock, current_setting('statement_timeout')"
    revision_1.write_text(
        revision_1.read_text().replace("def upgrade():\n", f'def upgrade():\n    op.execute("{seen}")\n')
    )
    url = sqlalchemy.make_url(pg_url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)

    result = cli(
        env={"MIGRATION_DATABASE_URL": url, "MIGRATION_DDL_LOCK_TIMEOUT": "3", "MIGRATION_STATEMENT_TIMEOUT": "7"}
    )

    assert result.code == 0, result.stdout[-2000:]
    assert query(pg_url, "SELECT * FROM seen") == [("3s", "7s")]


@pytest.mark.timeout(60)
def test_aiomysql_statement_is_killed_before_the_lock_is_released(cli: Cli, mysql_url: str) -> None:
    """The async template on MariaDB: SIGTERM in a long statement; it is gone from the server when the runner exits."""
    alembic_init(cli.cwd, "async")
    revision_2 = cli.cwd / "migrations" / "versions" / f"{rev_id(2)}_r.py"
    revision_2.write_text(
        revision_2.read_text().replace("def upgrade():\n", 'def upgrade():\n    op.execute("SELECT SLEEP(60)")\n')
    )
    url = sqlalchemy.make_url(mysql_url).set(drivername="mysql+aiomysql").render_as_string(hide_password=False)
    database = mysql_url.rsplit("/", 1)[1]
    running = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'SELECT SLEEP(60)%%'"
    started = time.monotonic()
    runner = cli.start(env={"MIGRATION_DATABASE_URL": url})
    wait_until(lambda: mysql_query(mysql_url, running, (database,)), 30, "the SLEEP(60) to run")
    runner.send_signal(signal.SIGTERM)
    result = cli.finish(runner, started, timeout=30)

    assert result.code == 143
    assert result.one("statement.cancelled")
    assert mysql_query(mysql_url, running, (database,)) == []
