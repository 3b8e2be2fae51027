"""The env.py patterns real projects use work unmodified, and an env.py that migrates elsewhere is refused (issue 23).

- pytest-alembic's pattern takes ``config.attributes["connection"]`` for an Engine
  (``with connectable.connect() as connection``): it exited 78 with
  "'Connection' object has no attribute 'connect'".
- An env.py with an engine of its own, built from the application's settings:
  on another database it failed with 70 after the lock guarded the wrong one;
  on the same database it ran without the runner's lock_timeout.
- ``version_table_schema`` set in env.py alone: upgrade applied, then exited 78;
  verify exited 70.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from support import Cli, make_project, query

# pytest-alembic's documented env.py (its "Setup" page): the attribute is treated as an Engine.
PYTEST_ALEMBIC_ENV_PY = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None


def run_migrations_online():
    connectable = context.config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(
            context.config.get_section(context.config.config_ini_section),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
"""

# Engine.begin() instead of connect(), and a dispose() at the end, as some projects write it.
BEGIN_ENV_PY = PYTEST_ALEMBIC_ENV_PY.replace("connectable.connect()", "connectable.begin()").replace(
    "run_migrations_online()\n", "run_migrations_online()\nconfig.attributes.get('connection') and None\n"
)

# An application's own settings: the engine's URL does not come from Alembic's config at all.
OWN_ENGINE_ENV_PY = """
import os

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
engine = create_engine(os.environ["APP_DATABASE_URL"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None{extra})
    with context.begin_transaction():
        context.run_migrations()
"""


def psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.mark.parametrize("env_py", [PYTEST_ALEMBIC_ENV_PY, BEGIN_ENV_PY], ids=["connect", "begin"])
def test_an_env_py_that_takes_the_shared_connection_for_an_engine_migrates(cli: Cli, pg_url: str, env_py: str) -> None:
    """pytest-alembic's env.py (connectable.connect() / begin()) migrates unmodified, recorded in the ledger."""
    make_project(cli.cwd, revisions=3, env_py=env_py)
    env = {"MIGRATION_DATABASE_URL": pg_url}

    upgraded = cli("upgrade", env=env)
    again = cli("upgrade", env=env)

    assert upgraded.code == 0, upgraded.stdout + upgraded.stderr
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [("0003",)]
    assert query(pg_url, "SELECT count(*) FROM applied_log") == [(3,)]
    assert query(pg_url, "SELECT count(*) FROM migration_runner_history WHERE outcome = 'applied'") == [(3,)]
    assert again.code == 0


def test_plan_and_verify_take_the_pytest_alembic_env_py(cli: Cli, pg_databases: Callable[[], str]) -> None:
    """plan --trace and verify run pytest-alembic's env.py too, and the trace changes nothing."""
    make_project(cli.cwd, revisions=2, env_py=PYTEST_ALEMBIC_ENV_PY)
    planned_url, verified_url = pg_databases(), pg_databases()

    plan = cli("plan", "--trace", "--output", "json", env={"MIGRATION_DATABASE_URL": planned_url})
    verify = cli("verify", "--output", "json", env={"MIGRATION_DATABASE_URL": verified_url})

    assert plan.code in (0, 1), plan.stdout + plan.stderr
    assert [step["revision"] for step in json.loads(plan.stdout)["pending"]] == ["0001", "0002"]
    assert query(planned_url, "SELECT to_regclass('applied_log')") == [(None,)]
    report = json.loads(verify.stdout)
    statuses = {case["name"]: case["status"] for case in report["cases"]}
    assert statuses["upgrade"] == "passed" and statuses["up_down_consistency[0002 down]"] == "passed", statuses
    # The generated revision 0001 leaves its applied_log behind on purpose: the only failures are about it.
    failed = [case["message"] for case in report["cases"] if case["status"] == "failed"]
    assert all("applied_log" in message for message in failed), failed


def test_an_env_py_engine_on_another_database_is_78_naming_both_and_applies_nothing(
    cli: Cli, pg_databases: Callable[[], str]
) -> None:
    """An env.py engine on another database than the locked one is 78 naming both; neither database changes."""
    locked, elsewhere = pg_databases(), pg_databases()
    make_project(cli.cwd, revisions=2, env_py=OWN_ENGINE_ENV_PY.format(extra=""))

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": locked, "APP_DATABASE_URL": psycopg_url(elsewhere)})

    assert result.code == 78, result.stdout + result.stderr
    message = result.one("config.invalid")["error"]
    assert locked.rsplit("/", 1)[1] in message and elsewhere.rsplit("/", 1)[1] in message, message
    for url in (locked, elsewhere):
        assert query(url, "SELECT to_regclass('alembic_version'), to_regclass('applied_log')") == [(None, None)]


def test_an_env_py_engine_on_the_same_database_gets_the_runners_session_settings(cli: Cli, pg_url: str) -> None:
    """An env.py engine on the same database runs with the runner's lock_timeout, statement_timeout and name."""
    seen = (
        "op.create_table('seen', sa.Column('name', sa.Text), sa.Column('value', sa.Text))\n"
        'op.execute("INSERT INTO seen SELECT name, setting FROM pg_settings '
        "WHERE name IN ('lock_timeout', 'statement_timeout')\")\n"
        "op.execute(\"INSERT INTO seen VALUES ('application_name', current_setting('application_name'))\")"
    )
    make_project(cli.cwd, revisions=1, env_py=OWN_ENGINE_ENV_PY.format(extra=""), bodies={1: seen})
    env = {
        "MIGRATION_DATABASE_URL": pg_url,
        "APP_DATABASE_URL": psycopg_url(pg_url),
        "MIGRATION_DDL_LOCK_TIMEOUT": "3",
        "MIGRATION_STATEMENT_TIMEOUT": "7",
    }

    result = cli("upgrade", env=env)

    assert result.code == 0, result.stdout + result.stderr
    values = dict(query(pg_url, "SELECT name, value FROM seen"))
    assert (values["lock_timeout"], values["statement_timeout"]) == ("3000", "7000")
    assert result.one("run.started")["run_id"] in values["application_name"]


@pytest.mark.parametrize("command", ["upgrade", "verify"])
def test_a_version_table_schema_set_only_in_env_py_is_78_before_anything_is_applied(
    cli: Cli, pg_url: str, command: str
) -> None:
    """env.py's own version_table_schema, unlike the settings', is 78 before anything is applied."""
    query(pg_url, "CREATE SCHEMA audit")
    env_py = OWN_ENGINE_ENV_PY.format(extra=", version_table_schema='audit'")
    make_project(cli.cwd, revisions=2, env_py=env_py)
    env = {"MIGRATION_DATABASE_URL": pg_url, "APP_DATABASE_URL": psycopg_url(pg_url)}

    refused = cli(command, env=env)
    left = query(pg_url, "SELECT to_regclass('applied_log'), to_regclass('audit.alembic_version')")
    agreed = cli(command, env={**env, "MIGRATION_VERSION_TABLE_SCHEMA": "audit"})

    assert refused.code == 78, refused.stdout + refused.stderr
    message = refused.one("config.invalid")["error"]
    assert "'audit'" in message and "MIGRATION_VERSION_TABLE_SCHEMA" in message, message
    assert left == [(None, None)]
    # verify's stairway fails on the generated 0001, which leaves applied_log behind on purpose: 1, not 78.
    assert agreed.code == (0 if command == "upgrade" else 1), agreed.stdout + agreed.stderr
    assert agreed.named("config.invalid") == []


def test_verify_with_revision_data_on_an_env_py_that_shares_the_connection(cli: Cli, pg_url: str) -> None:
    """On pytest-alembic's env.py the runner's connection is env.py's: between steps Alembic's transaction is open
    (the version table it made), and the snapshot before each step and the revision data must leave it open.

    Before, reading the schema rolled it back and revision 0001 failed: relation "alembic_version" does not exist.
    """
    make_project(cli.cwd, revisions=3, env_py=PYTEST_ALEMBIC_ENV_PY)
    data = cli.cwd / "data"
    data.mkdir()
    (data / "0002.sql").write_text("INSERT INTO applied_log (revision, pid) VALUES ('seeded', 0);")

    result = cli("verify", "--output", "json", "--data-dir", str(data), env={"MIGRATION_DATABASE_URL": pg_url})

    statuses = {case["name"]: case["status"] for case in json.loads(result.stdout)["cases"]}
    assert statuses["upgrade"] == "passed", result.stdout + result.stderr
    assert statuses["up_down_consistency[0003 down]"] == "passed"
    assert [e["revision"] for e in result.named("verify.data_put_in_place")] == ["0002"]
