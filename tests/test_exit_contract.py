"""The exit code is the product: no false success, and the documented code for every bad input.

Each test here failed on the code before issue 9 (it exited 0, 65, 69 or 70 where these expect
otherwise); see the closing note of that issue for the before/after table.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from faults import ThrowawayPostgres
from support import Cli, lock_key_for, make_project, query, rev_id, version

UNREACHABLE = "postgresql://postgres@127.0.0.1:9/nowhere"


def untouched(url: str) -> bool:
    """The database has no version table: nothing was migrated."""
    return query(url, "SELECT to_regclass('alembic_version')") == [(None,)]


# --- 1. where the database URL comes from ---------------------------------------------------------


def test_database_url_alone_migrates_that_database_not_sqlite(cli: Cli, pg_url: str) -> None:
    """Only DATABASE_URL set, default environment: PostgreSQL is migrated, no SQLite file appears."""
    make_project(cli.cwd, revisions=2)

    result = cli(env={"DATABASE_URL": pg_url})

    assert result.code == 0, result.stdout + result.stderr
    assert version(pg_url) == [rev_id(2)]
    assert not (cli.cwd / "migration-runner.db").exists()
    started = result.one("run.started")
    assert started["database_source"] == "DATABASE_URL"
    assert started["database"].endswith(sqlalchemy.make_url(pg_url).database)


def test_the_ini_named_by_alembic_config_supplies_the_url(cli: Cli, pg_url: str) -> None:
    """MIGRATION_ALEMBIC_CONFIG=alembic.prod.ini with its own sqlalchemy.url: that database is migrated."""
    make_project(cli.cwd, revisions=2)
    ini = (cli.cwd / "alembic.ini").read_text()
    (cli.cwd / "alembic.prod.ini").write_text(
        ini.replace("sqlalchemy.url = driver://user:pass@localhost/dbname", f"sqlalchemy.url = {pg_url}")
    )

    result = cli(env={"MIGRATION_ALEMBIC_CONFIG": "alembic.prod.ini"})

    assert result.code == 0, result.stdout + result.stderr
    assert version(pg_url) == [rev_id(2)]
    assert not (cli.cwd / "migration-runner.db").exists()
    assert result.one("run.started")["database_source"] == "sqlalchemy.url in alembic.prod.ini"


def test_url_sources_in_order_flag_variable_database_url_ini_default(
    cli: Cli, pg_databases: object, tmp_path: Path
) -> None:
    """--database-url > MIGRATION_DATABASE_URL > DATABASE_URL > ini > development default; each named in run.started."""
    flag_db, variable_db, plain_db, ini_db = (pg_databases() for _ in range(4))  # type: ignore[operator]
    make_project(cli.cwd, revisions=1)
    ini = cli.cwd / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", ini_db))

    def source(*args: str, **env: str) -> str:
        result = cli("check", *args, env=env)
        assert result.code == 1, result.stdout + result.stderr  # every one of them is empty: not at target
        return str(result.one("run.started")["database_source"])

    everything = {"MIGRATION_DATABASE_URL": variable_db, "DATABASE_URL": plain_db}
    assert source("--database-url", flag_db, **everything) == "--database-url"
    assert source(**everything) == "MIGRATION_DATABASE_URL"
    assert source(DATABASE_URL=plain_db) == "DATABASE_URL"
    assert source() == "sqlalchemy.url in alembic.ini"
    ini.write_text(ini.read_text().replace(ini_db, "driver://user:pass@localhost/dbname"))
    assert source() == "the development default"  # the `alembic init` placeholder is no URL


@pytest.mark.parametrize(
    ("name", "meant"),
    [("MIGRATON_DATABASE_URL", "MIGRATION_DATABASE_URL"), ("MIGRATIONS_LOCK_TIMEOUT", "MIGRATION_LOCK_TIMEOUT")],
)
def test_a_misspelt_prefix_is_an_unknown_setting(cli: Cli, name: str, meant: str) -> None:
    """A variable one or two edits from the MIGRATION_ prefix is a typo: 78 with "did you mean"."""
    make_project(cli.cwd, revisions=1)

    result = cli(env={name: "x", "MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78
    assert f"did you mean {meant}?" in result.one("config.invalid")["error"]


def test_an_applications_own_similar_variable_is_left_alone(cli: Cli) -> None:
    """MIGRATIONS_PATH is close to the prefix but to no setting: not a typo."""
    make_project(cli.cwd, revisions=1)

    result = cli("config", env={"MIGRATIONS_PATH": "/srv/app", "MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 0, result.stderr


# --- 2. a script location that is not one ---------------------------------------------------------


def test_script_location_without_env_py_is_78_and_suggests_the_subdirectory(cli: Cli, pg_url: str) -> None:
    """The project root instead of migrations/: 78, naming env.py, suggesting migrations/."""
    make_project(cli.cwd, revisions=2)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_SCRIPT_LOCATION": str(cli.cwd)})

    assert result.code == 78, result.stdout
    error = result.one("project.broken")["error"]
    assert "has no env.py" in error
    assert f"did you mean {cli.cwd / 'migrations'}?" in error
    assert untouched(pg_url)


def test_an_empty_directory_and_an_empty_versions_directory_are_78(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """An empty script directory, or one with env.py and no revisions, is never "already at target"."""
    empty = tmp_path / "empty"
    empty.mkdir()
    make_project(cli.cwd, revisions=1)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_SCRIPT_LOCATION": str(empty)}

    assert cli(env=env).code == 78
    (cli.cwd / "migrations" / "versions" / f"{rev_id(1)}_r.py").unlink()
    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 78
    assert "has no revisions" in result.one("project.broken")["error"]


# --- 3. a target older than the database --------------------------------------------------------


@pytest.mark.parametrize("target", [rev_id(1), "base", "-1"])
def test_upgrade_to_an_older_target_is_78_but_check_and_wait_accept_it(cli: Cli, pg_url: str, target: str) -> None:
    """upgrade never downgrades: 78 naming both revisions. check and wait: "at or past the target" is 0."""
    make_project(cli.cwd, revisions=3)
    assert cli(env={"MIGRATION_DATABASE_URL": pg_url}).code == 0
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TARGET": target}

    result = cli(env=env)

    assert result.code == 78, result.stdout
    assert f"the database is at {rev_id(3)}, newer than the target {target!r}" in result.one("config.invalid")["error"]
    assert version(pg_url) == [rev_id(3)]
    assert cli("check", env=env).code == 0
    assert cli("wait", env=env).code == 0


# --- 4. a URL without a database ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:5432/", "postgresql://", "mysql://root@127.0.0.1/"])
def test_a_url_without_a_database_name_is_78(cli: Cli, url: str) -> None:
    """libpq would connect to its default database and migrate it: refuse, naming the problem."""
    make_project(cli.cwd, revisions=1)
    default_database = "postgresql://postgres@127.0.0.1:5432/postgres"  # libpq's default for user postgres
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    before = query(default_database, tables)

    result = cli(env={"MIGRATION_DATABASE_URL": url})

    assert result.code == 78
    assert "names no database" in result.one("config.invalid")["error"]
    assert result.named("lock.acquired") == []
    assert query(default_database, tables) == before


def test_sqlite_in_memory_needs_no_database_name(cli: Cli) -> None:
    """sqlite:// is SQLite's in-memory database: a valid URL."""
    make_project(cli.cwd, revisions=1)

    assert cli("check", env={"MIGRATION_DATABASE_URL": "sqlite://"}).code == 1


# --- 5. project code that exits ----------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    ["import sys; sys.exit(0)", "raise SystemExit('done')", "raise KeyboardInterrupt", "raise GeneratorExit"],
)
def test_a_revision_that_exits_is_a_failed_revision(cli: Cli, pg_url: str, statement: str) -> None:
    """sys.exit(0) in revision 2 of 3: exit 65 naming it, run.finished logged, the result document printed."""
    make_project(cli.cwd, revisions=3, bodies={2: statement})

    result = cli("--json", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 65, result.stdout + result.stderr
    failed = result.one("revision.failed")
    assert failed["revision"] == rev_id(2)
    assert result.one("run.finished")["exit_code"] == 65
    document = json.loads(result.stdout)
    assert document["exit_code"] == 65
    assert document["error"]["revision"] == rev_id(2)
    assert version(pg_url) == [rev_id(1)]


# --- 6. print() in project code ------------------------------------------------------------------


def test_print_in_env_py_and_revisions_never_reaches_the_json_document(cli: Cli, pg_url: str) -> None:
    """With --output json, stdout is exactly one JSON document, for upgrade and for current."""
    make_project(
        cli.cwd,
        revisions=2,
        bodies={1: 'print("from revision 1")\nimport os\nos.system("echo from a subprocess")'},
    )
    env_py = cli.cwd / "migrations" / "env.py"
    env_py.write_text('print("from env.py")\n' + env_py.read_text())
    env = {"MIGRATION_DATABASE_URL": pg_url}

    upgrade = cli("--json", env=env)
    current = cli("current", "--json", env=env)

    assert upgrade.code == 0, upgrade.stderr
    assert json.loads(upgrade.stdout)["applied"][1]["revision"] == rev_id(2)
    assert "from revision 1" in upgrade.stderr and "from a subprocess" in upgrade.stderr
    assert json.loads(current.stdout)["to"] == [rev_id(2)]


# --- 7. a broken env.py ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("from myapp.models import Base\n", "ModuleNotFoundError"), ("def broken(:\n", "SyntaxError")],
)
def test_an_env_py_that_fails_to_import_is_78_naming_it(cli: Cli, pg_url: str, prefix: str, expected: str) -> None:
    """A missing application module or a syntax error in env.py: a broken project (78), not a failed revision."""
    make_project(cli.cwd, revisions=2)
    env_py = cli.cwd / "migrations" / "env.py"
    env_py.write_text(prefix + env_py.read_text())

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 78, result.stdout
    error = result.one("project.broken")["error"]
    assert str(env_py) in error and expected in error
    assert "Traceback" not in result.stdout + result.stderr


def test_an_env_py_that_never_runs_the_migrations_is_not_success(cli: Cli, pg_url: str) -> None:
    """env.py that returns without run_migrations() leaves revisions pending: 78, never 0."""
    make_project(cli.cwd, revisions=2)
    (cli.cwd / "migrations" / "env.py").write_text("from alembic import context\n")

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 78
    assert "still pending" in result.one("project.broken")["error"]


# --- wrong codes on bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "names"),
    [
        pytest.param({"MIGRATION_LOCK_TIMEOUT": "inf"}, "MIGRATION_LOCK_TIMEOUT", id="inf"),
        pytest.param({"MIGRATION_TIMEOUT": "nan"}, "MIGRATION_TIMEOUT", id="nan"),
        pytest.param({"MIGRATION_CONNECT_TIMEOUT": "1e20"}, "MIGRATION_CONNECT_TIMEOUT", id="1e20"),
        pytest.param({"MIGRATION_TARGET": ""}, "MIGRATION_TARGET", id="empty-target"),
        pytest.param({"MIGRATION_VERSION_TABLE": ""}, "MIGRATION_VERSION_TABLE", id="empty-version-table"),
        pytest.param({"MIGRATION_VERSION_TABLE_SCHEMA": ""}, "MIGRATION_VERSION_TABLE_SCHEMA", id="empty-schema"),
        pytest.param({"MIGRATION_DATABASE_URL": "postgresql+pg8000://postgres@127.0.0.1/x"}, "'pg8000'", id="driver"),
        pytest.param({"MIGRATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:99999/x"}, "99999", id="port"),
        pytest.param(
            {"MIGRATION_DATABASE_URL": "postgresql://postgres:p@ss:word@127.0.0.1/x"},
            "percent-encode",
            id="unencoded-password",
        ),
    ],
)
def test_bad_values_are_78_with_one_line(cli: Cli, env: dict[str, str], names: str) -> None:
    """Each gave 70 (a traceback) or 65 before: now 78 and one line, before any connection."""
    make_project(cli.cwd, revisions=1)

    result = cli(env={"MIGRATION_DATABASE_URL": UNREACHABLE, **env})

    assert result.code == 78, result.stdout + result.stderr
    error = result.one("config.invalid")["error"]
    assert names in error and "\n" not in error
    assert "Traceback" not in result.stdout + result.stderr
    assert "word@" not in result.stdout + result.stderr


def test_a_metrics_port_in_use_or_an_unparsable_bind_address_is_78(cli: Cli, pg_url: str) -> None:
    """Both gave 70 with a traceback."""
    make_project(cli.cwd, revisions=1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        in_use = cli(
            env={
                "MIGRATION_DATABASE_URL": pg_url,
                "MIGRATION_METRICS_PORT": port,
                "MIGRATION_METRICS_BIND_ADDRESS": "127.0.0.1",
            }
        )
    bad_address = cli(
        env={
            "MIGRATION_DATABASE_URL": pg_url,
            "MIGRATION_METRICS_PORT": "9464",
            "MIGRATION_METRICS_BIND_ADDRESS": "not an address",
        }
    )

    for result in (in_use, bad_address):
        assert result.code == 78, result.stdout + result.stderr
        assert "MIGRATION_METRICS_PORT" in result.one("config.invalid")["error"]
        assert "Traceback" not in result.stdout + result.stderr
    assert untouched(pg_url)


@pytest.mark.parametrize("kind", ["directory", "dangling-symlink", "not-utf8"])
def test_an_unreadable_secret_file_is_78(cli: Cli, tmp_path: Path, kind: str) -> None:
    """A secret file that cannot be read as text: 78 naming it (was 70, or silently skipped)."""
    make_project(cli.cwd, revisions=1)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    target = secrets / "migration_lock_timeout"
    if kind == "directory":
        target.mkdir()  # root reads any file, so unreadable is shown with a directory
    elif kind == "dangling-symlink":
        target.symlink_to(tmp_path / "gone")
    else:
        target.write_bytes(b"\xff\xfe3\x00")

    result = cli(env={"MIGRATION_SECRETS_DIR": str(secrets), "MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78, result.stdout + result.stderr
    assert str(target) in result.one("config.invalid")["error"]


@pytest.mark.parametrize("kind", ["directory", "binary"])
def test_an_unreadable_dotenv_is_78(cli: Cli, kind: str) -> None:
    """An unreadable or binary .env: 78 naming it (was 70)."""
    make_project(cli.cwd, revisions=1)
    if kind == "directory":
        (cli.cwd / ".env").mkdir()
    else:
        (cli.cwd / ".env").write_bytes(b"MIGRATION_TARGET=\xff\xfe\x00\x01")

    result = cli(env={"MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78, result.stdout + result.stderr
    assert ".env" in result.one("config.invalid")["error"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("query_string", "words"),
    [("?options=-c%20no_such_parameter%3D1", "no_such_parameter"), ("?sslmode=require", "SSL")],
)
def test_connection_settings_the_server_refuses_are_78_at_once(
    cli: Cli, pg_url: str, query_string: str, words: str
) -> None:
    """They fail the same way every time: 78 within seconds, not 69 after MIGRATION_CONNECT_TIMEOUT."""
    make_project(cli.cwd, revisions=1)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url + query_string, "MIGRATION_CONNECT_TIMEOUT": "20"})

    assert result.code == 78, result.stdout
    assert words in result.one("config.invalid")["error"]
    assert result.named("database.retrying") == []
    assert result.one("run.finished")["duration_seconds"] < 20  # not after MIGRATION_CONNECT_TIMEOUT=20


@pytest.mark.parametrize("command", [["upgrade"], ["resolve", "--mark", "applied"]])
def test_a_read_only_database_is_69_before_the_lock(cli: Cli, pg_url: str, command: list[str]) -> None:
    """default_transaction_read_only: 69 (retryable, as during a failover), the lock never taken."""
    make_project(cli.cwd, revisions=1)
    name = sqlalchemy.make_url(pg_url).database
    query(pg_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')

    result = cli(*command, env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 69, result.stdout
    assert "read-only server" in result.one("database.read_only")["error"]
    assert result.named("lock.acquired") == []


@pytest.mark.timeout(90)
def test_a_hot_standby_is_69_before_the_lock(cli: Cli) -> None:
    """A URL that reaches a streaming replica (pg_is_in_recovery()): 69, naming it a standby; the lock never taken."""
    primary = ThrowawayPostgres()
    primary.start()
    standby = None
    try:
        standby = ThrowawayPostgres(standby_of=primary)
        standby.start()
        make_project(cli.cwd, revisions=1)

        result = cli(env={"MIGRATION_DATABASE_URL": standby.url, "MIGRATION_CONNECT_TIMEOUT": "5"})
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()

    assert result.code == 69, result.stdout
    assert "hot standby" in result.one("database.read_only")["error"]
    assert result.named("lock.acquired") == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("form", ["dbname-parameter", "other-host-name"])
def test_two_url_forms_of_one_database_share_one_lock(cli: Cli, pg_url: str, form: str) -> None:
    """/db and /?dbname=db, or 127.0.0.1 and localhost: one lock, so the second runner waits (75 here)."""
    make_project(cli.cwd, revisions=1)
    parsed = sqlalchemy.make_url(pg_url)
    if form == "dbname-parameter":
        other = parsed.set(database=None).update_query_dict({"dbname": parsed.database})
    else:
        other = parsed.set(host="localhost")
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key_for(pg_url),))

        result = cli(env={"MIGRATION_DATABASE_URL": other.render_as_string(False), "MIGRATION_LOCK_TIMEOUT": "1"})

    assert result.code == 75, result.stdout
    assert untouched(pg_url)


def test_a_metrics_textfile_over_a_fifo_or_a_symlink_is_78(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """The textfile is renamed into place: refuse a target that is not a regular file; it stays as it was."""
    make_project(cli.cwd, revisions=1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    real = tmp_path / "real.prom"
    real.write_text("keep me\n")
    link = tmp_path / "link.prom"
    link.symlink_to(real)

    for target in (fifo, link):
        result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_METRICS_TEXTFILE": str(target)})
        assert result.code == 78, result.stdout
        assert "not a regular file" in result.one("config.invalid")["error"]
    assert fifo.is_fifo() and link.is_symlink() and real.read_text() == "keep me\n"
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
