"""Real projects from PyPI, as they ship: the same schema as their own tool, a no-op again, and no harm from a stop.

Issue 23, point 12. Two Alembic histories that packages ship inside themselves, run from
site-packages with their own ``alembic.ini`` and ``env.py``, and one Django project:

- **MLflow** (``mlflow-skinny``): 70-odd revisions; its ``env.py`` is not ``alembic init``'s: it
  takes ``config.attributes["connection"].engine`` and opens a connection of its own from it.
- **Optuna**: its ``env.py`` imports the application's models and sets ``render_as_batch``.
- **A Django site** (``tests/projects/thirdparty``): contrib apps and eight third-party apps
  from PyPI, each with its own migrations, about 90 in all.

Each migrates on PostgreSQL to the same schema as the tool's own command (``alembic upgrade
head``, ``manage.py migrate``), compared as ``pg_dump --schema-only`` prints it (the ledger
left out); is a no-op the second time; and, stopped inside a revision by SIGKILL or SIGTERM,
leaves a database the next run finishes to that same schema. The stop is placed without
timing: the test holds the version table in EXCLUSIVE mode, so the revision blocks on its
version-table write with its own changes made and not committed, and the stop lands there.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from alembic.config import Config
from alembic.script import ScriptDirectory
from django.db.migrations.executor import MigrationExecutor
from faults import postgres_bin
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
from support import REPO, Cli, query, wait_until

THIRD_PARTY = REPO / "tests" / "projects" / "thirdparty"


def schema(url: str) -> list[str]:
    """The database's schema as ``pg_dump --schema-only`` prints it: statements, sorted, without the ledger's."""
    dump = subprocess.run(
        [str(postgres_bin() / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges", "--no-comments", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    lines = [line for line in dump.splitlines() if line and not line.startswith(("--", "SET ", "SELECT pg_catalog"))]
    statements = (statement.strip() for statement in "\n".join(lines).split(";\n"))
    return sorted(s for s in statements if s and "migration_runner_history" not in s and not s.startswith("\\"))


@dataclass(frozen=True)
class Project:
    """How a user runs one project: its variables for the runner and the tool's own command."""

    name: str
    runner_env: Callable[[str], dict[str, str]]
    reference: Callable[[str, Path], list[str]]  # the tool's own command for a database URL
    cwd: Path | None
    version_table: str  # the table each step writes last: the test holds it to stop the run there
    middle: str  # a target half-way through the history
    prepare: Callable[[str], None] = lambda _: None  # what the project's own set-up does before migrating


def _package_dir(module: str) -> Path:
    imported = __import__(module, fromlist=["_"])
    return Path(imported.__path__[0])


def _mlflow_initial_tables(url: str) -> None:
    """What MLflow's own ``_initialize_tables`` does before its first revision: its history starts from these."""
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        InitialBase.metadata.create_all(engine)
    finally:
        engine.dispose()


def _alembic_project(
    name: str, package: str, ini: str, scripts: str, prepare: Callable[[str], None] = lambda _: None
) -> Project:
    root = _package_dir(package)
    ini_path, script_location = root / ini, root / scripts

    def runner_env(url: str) -> dict[str, str]:
        return {
            "MIGRATION_DATABASE_URL": url,
            "MIGRATION_ALEMBIC_CONFIG": str(ini_path),
            "MIGRATION_SCRIPT_LOCATION": str(script_location),
        }

    def reference(url: str, tmp_path: Path) -> list[str]:
        # The shipped ini as it is (its logging sections too), but for the two options a user sets.
        ini_copy = tmp_path / f"{name}-alembic.ini"
        text = re.sub(r"(?m)^script_location\s*=.*$", f"script_location = {script_location}", ini_path.read_text())
        psycopg_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        ini_copy.write_text(re.sub(r"(?m)^sqlalchemy\.url\s*=.*$", f"sqlalchemy.url = {psycopg_url}", text))
        return [sys.executable, "-m", "alembic", "-c", str(ini_copy), "upgrade", "head"]

    config = Config()
    config.set_main_option("script_location", str(script_location))
    history = list(reversed(list(ScriptDirectory.from_config(config).walk_revisions())))
    middle = history[len(history) // 2].revision
    return Project(name, runner_env, reference, None, "alembic_version", middle, prepare)


def _django_project() -> Project:
    def runner_env(url: str) -> dict[str, str]:
        parsed = sqlalchemy.make_url(url)
        return {  # the project's own settings.py reads these, as with dj-database-url
            "DJANGO_SETTINGS_MODULE": "site_settings.settings",
            "DJANGO_DB_NAME": parsed.database or "",
            "DJANGO_DB_HOST": parsed.host or "",
            "DJANGO_DB_PORT": str(parsed.port or ""),
            "DJANGO_DB_USER": parsed.username or "",
        }

    def reference(_: str, __: Path) -> list[str]:
        return [sys.executable, "manage.py", "migrate", "--no-input"]

    return Project(
        "django-site",
        runner_env,
        reference,
        THIRD_PARTY,
        "django_migrations",
        "auth:0012_alter_user_first_name_max_length",
    )


PROJECTS = {
    "mlflow": lambda: _alembic_project(
        "mlflow", "mlflow", "store/db_migrations/alembic.ini", "store/db_migrations", _mlflow_initial_tables
    ),
    "optuna": lambda: _alembic_project("optuna", "optuna.storages._rdb", "alembic.ini", "alembic"),
    "django-site": _django_project,
}


@pytest.fixture(params=sorted(PROJECTS))
def project(request: pytest.FixtureRequest) -> Project:
    return PROJECTS[request.param]()


def tool_schema(cli: Cli, project: Project, url: str, tmp_path: Path) -> list[str]:
    """Migrate ``url`` with the tool's own command; its schema."""
    project.prepare(url)
    done = subprocess.run(
        project.reference(url, tmp_path),
        cwd=project.cwd or tmp_path,
        env=cli.env(project.runner_env(url)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return schema(url)


@contextlib.contextmanager
def version_table_held(url: str, table: str) -> Iterator[None]:
    """Hold ``table`` in EXCLUSIVE mode: reads go on, the runner's write of its next step waits."""
    with psycopg.connect(url) as holder:
        holder.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        yield
        holder.rollback()


def blocked_on(url: str, table: str) -> bool:
    """A session of this database waits for a lock while writing ``table``."""
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        " AND query ~* %s"
    )
    return query(url, sql, (rf"^\s*(UPDATE|INSERT INTO)\s+\"?{table}\y",)) != [
        (0,)
    ]  # \y: a word boundary in PostgreSQL


@pytest.mark.timeout(900)
def test_same_schema_as_the_tool_and_a_noop_again(
    cli: Cli, project: Project, pg_databases: Callable[[], str], tmp_path: Path
) -> None:
    """Each real project reaches the tool's own schema (pg_dump) and is a no-op the second time."""
    ours, theirs = pg_databases(), pg_databases()
    expected = tool_schema(cli, project, theirs, tmp_path)
    project.prepare(ours)

    first = cli("upgrade", env=project.runner_env(ours), cwd=project.cwd or tmp_path, timeout=300)
    again = cli("upgrade", env=project.runner_env(ours), cwd=project.cwd or tmp_path, timeout=120)

    assert first.code == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert len(first.named("revision.applied")) > 9
    assert schema(ours) == expected
    assert again.code == 0 and again.one("upgrade.noop"), again.stdout[-2000:]


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGKILL, -9), (signal.SIGTERM, 143)], ids=["KILL", "TERM"])
def test_stopped_inside_a_revision_the_next_run_finishes_to_the_same_schema(  # noqa: PLR0917  (fixtures)
    cli: Cli, project: Project, pg_databases: Callable[[], str], tmp_path: Path, signum: int, code: int
) -> None:
    """SIGKILL or SIGTERM inside a real project's revision rolls it back; the next run finishes to the same schema."""
    ours, theirs = pg_databases(), pg_databases()
    expected = tool_schema(cli, project, theirs, tmp_path)
    cwd = project.cwd or tmp_path
    project.prepare(ours)
    half = cli("upgrade", env={**project.runner_env(ours), "MIGRATION_TARGET": project.middle}, cwd=cwd, timeout=300)
    assert half.code == 0, half.stdout[-3000:] + half.stderr[-3000:]
    recorded = f"SELECT * FROM {project.version_table} ORDER BY 1"
    applied_before = query(ours, recorded)

    slow = {**project.runner_env(ours), "MIGRATION_DDL_LOCK_TIMEOUT": "120"}
    with version_table_held(ours, project.version_table):
        started = time.monotonic()
        runner = cli.start("upgrade", env=slow, cwd=cwd)
        wait_until(
            lambda: blocked_on(ours, project.version_table), 120, "a revision to wait on its version-table write"
        )
        runner.send_signal(signum)
        stopped = cli.finish(runner, started, timeout=120)
    assert stopped.code == code, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert query(ours, recorded) == applied_before  # the interrupted revision rolled back
    if signum == signal.SIGTERM:
        assert stopped.one("run.interrupted")["partially_applied"] is False

    finished = cli("upgrade", env=project.runner_env(ours), cwd=cwd, timeout=300)

    assert finished.code == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert schema(ours) == expected


def test_djangos_executor_still_records_in_the_order_the_runner_replaces() -> None:
    """runner.drivers.django replaces apply_migration and unapply_migration (private): pin what they do now."""
    applying = inspect.getsource(MigrationExecutor.apply_migration)
    unapplying = inspect.getsource(MigrationExecutor.unapply_migration)
    assert "if not schema_editor.deferred_sql:" in applying  # recorded outside the transaction otherwise
    assert "self.record_migration(migration)" in applying
    assert unapplying.index("record_unapplied") > unapplying.index("migration.unapply(state, schema_editor)")
