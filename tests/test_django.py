"""Django projects: the example project and Django's contrib apps, on PostgreSQL, MariaDB and SQLite.

Every test runs the runner as a user would: ``migration-runner`` in the
project's directory with ``DJANGO_SETTINGS_MODULE`` set, against a real server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import sqlalchemy
from support import (
    REPO,
    Cli,
    Watched,
    advisory_locks_held,
    applied,
    copy_django_example,
    mysql_query,
    query,
    wait_until,
)

from runner import urls
from runner.drivers._django_database import entry_of_url

SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
# contenttypes (2), auth (12) and the example's shop app (3).
EXAMPLE_MIGRATIONS = 17
EXAMPLE_LEAVES = [
    "auth.0012_alter_user_first_name_max_length",
    "contenttypes.0002_remove_content_type_name",
    "shop.0003_product_name_index",
]
DJANGO = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}


@pytest.fixture
def project(cli: Cli) -> Path:
    """The example project, copied to the CLI's working directory."""
    cli.cwd.rmdir()
    return copy_django_example(cli.cwd)


def env(url: str, **more: str) -> dict[str, str]:
    return {**DJANGO, "MIGRATION_DATABASE_URL": url, **more}


def add_migration(project: Path, name: str, body: str, depends: str = "0003_product_name_index") -> None:
    """Write shop/migrations/<name>.py with ``body`` as its class body (operations, atomic)."""
    head = "from django.db import migrations, models\n\n\nclass Migration(migrations.Migration):\n"
    dependencies = f'    dependencies = [("shop", "{depends}")]\n'
    source = head + dependencies + textwrap.indent(textwrap.dedent(body).strip(), "    ")
    (project / "shop" / "migrations" / f"{name}.py").write_text(source + "\n")


def settings_module(project: Path, name: str, url: str | None, **entry: Any) -> dict[str, str]:
    """A settings module ``name`` in the project: the example's, with DATABASES['default'] from ``url`` or ``entry``."""
    database = entry_of_url(urls.parse(url)) if url else entry
    (project / f"{name}.py").write_text(f"from mysite.settings import *\n\nDATABASES = {{'default': {database!r}}}\n")
    return {"DJANGO_SETTINGS_MODULE": name}


def tables(url: str) -> list[str]:
    parsed = sqlalchemy.make_url(url)
    if parsed.get_backend_name() == "mysql":
        return sorted(row[0] for row in mysql_query(url, "SHOW TABLES"))
    return sorted(
        row[0] for row in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    )


def permissions(url: str) -> list[tuple[str, ...]]:
    sql = (
        "SELECT ct.app_label, ct.model, p.codename FROM auth_permission p "
        "JOIN django_content_type ct ON ct.id = p.content_type_id ORDER BY 1, 2, 3"
    )
    if sqlalchemy.make_url(url).get_backend_name() == "mysql":
        return [tuple(row) for row in mysql_query(url, sql)]
    return [tuple(row) for row in query(url, sql)]


def test_the_noop_imports_no_sqlalchemy_on_each_database(cli: Cli, project: Path, any_url: str) -> None:
    """At head the run loads Django, as it must, but not SQLAlchemy (on MySQL, a connection's id once pulled it in)."""
    assert cli("upgrade", env=env(any_url)).code == 0
    child = (
        "import sys, runner.cli\n"
        "code = runner.cli.main(['upgrade'])\n"
        "print('RESULT', code, 'sqlalchemy' in sys.modules, file=sys.stderr)"
    )

    done = subprocess.run(
        [sys.executable, "-c", child],
        cwd=cli.cwd,
        env=cli.env(env(any_url)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.stderr.strip().splitlines()[-1] == "RESULT 0 False", done.stdout + done.stderr
    assert '"upgrade.noop"' in done.stdout


def test_upgrade_noop_check_current_on_each_database(cli: Cli, project: Path, any_url: str) -> None:
    """The Django example on each database: check 1, upgrade applies each migration once, then a no-op and check 0."""
    before = cli("check", env=env(any_url))
    assert before.code == 1, before.stderr
    assert len(before.one("check.pending")["pending"]) == EXAMPLE_MIGRATIONS

    first = cli("upgrade", env=env(any_url))
    assert first.code == 0, first.stderr
    assert first.one("run.started")["tool"] == "django"
    revisions = [e["revision"] for e in first.named("revision.applied")]
    assert len(revisions) == EXAMPLE_MIGRATIONS
    assert revisions[-3:] == ["shop.0001_initial", "shop.0002_product_slug", "shop.0003_product_name_index"]
    assert all(e["duration_seconds"] >= 0 for e in first.named("revision.applied"))
    assert first.one("upgrade.finished")["current"] == EXAMPLE_LEAVES
    # Django's own chatter ("Running migrations:") is in log events, never raw on stdout.
    assert all(line.startswith("{") for line in first.stdout.splitlines())
    assert first.named("django.output")
    assert len(applied(any_url, "django")) == EXAMPLE_MIGRATIONS

    again = cli("upgrade", env=env(any_url))
    assert again.code == 0, again.stderr
    assert again.one("upgrade.noop")["reason"] == "already at target"
    assert not again.named("lock.acquired")

    after = cli("check", env=env(any_url))
    assert after.code == 0, after.stderr

    current = cli("current", "--json", env=env(any_url))
    assert current.code == 0, current.stderr
    document = json.loads(current.stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["to"] == EXAMPLE_LEAVES
    assert document["heads"] == EXAMPLE_LEAVES
    assert document["pending"] == []


@pytest.mark.parametrize("server", ["postgresql", "mariadb"])
def test_same_state_as_manage_py_migrate(
    cli: Cli, project: Path, server: str, request: pytest.FixtureRequest, pg_databases: Callable[[], str]
) -> None:
    """The runner and `manage.py migrate` leave the same django_migrations rows, tables and permissions."""
    if server == "postgresql":
        ours, theirs = pg_databases(), pg_databases()
    else:
        create = request.getfixturevalue("mysql_databases")
        ours, theirs = create(), create()
    reference = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=project,
        env=cli.env(settings_module(project, "reference_settings", theirs)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stderr

    result = cli("upgrade", env=env(ours))

    assert result.code == 0, result.stderr
    assert applied(ours, "django") == applied(theirs, "django")
    assert len(applied(ours, "django")) == EXAMPLE_MIGRATIONS
    assert [t for t in tables(ours) if t != "migration_runner_history"] == tables(theirs)
    assert permissions(ours) == permissions(theirs)
    assert len(permissions(ours)) == 20  # add/change/delete/view of 5 models


@pytest.mark.timeout(240)
def test_ten_runners_at_once_apply_each_migration_once(cli: Cli, project: Path, pg_url: str) -> None:
    """Ten Django runners at once: each migration applied and recorded in the ledger exactly once."""
    started = time.monotonic()
    processes = [cli.start("upgrade", env=env(pg_url, MIGRATION_LOCK_TIMEOUT="180")) for _ in range(10)]
    results = [cli.finish(process, started, timeout=200) for process in processes]

    assert [r.code for r in results] == [0] * 10, [r.stderr[-2000:] for r in results if r.code]
    rows = applied(pg_url, "django")
    assert len(rows) == len(set(rows)) == EXAMPLE_MIGRATIONS
    assert sum(len(r.named("revision.applied")) for r in results) == EXAMPLE_MIGRATIONS
    assert len(permissions(pg_url)) == 20
    assert advisory_locks_held(pg_url) == 0
    ledger = query(pg_url, "SELECT revision, count(*) FROM migration_runner_history GROUP BY revision")
    assert sorted(revision for revision, _ in ledger) == rows  # one ledger row per migration, no more
    assert {count for _, count in ledger} == {1}


def test_wait_returns_once_another_process_migrates(cli: Cli, project: Path, pg_url: str) -> None:
    """wait polls an unmigrated database (wait.waiting) and returns 0 once another process migrates it."""
    waiter = Watched(cli.start("wait", env=env(pg_url, MIGRATION_WAIT_TIMEOUT="60")))
    polling = waiter.wait_for("wait.waiting", timeout=60)  # it has seen the database, and not returned
    assert polling["pending"], polling

    assert cli("upgrade", env=env(pg_url)).code == 0
    result = waiter.finish(timeout=60)

    assert result.code == 0, result.stderr
    assert result.one("wait.finished")["current"] == EXAMPLE_LEAVES


def test_the_databases_entry_is_used_when_no_url_is_set(cli: Cli, project: Path, pg_url: str) -> None:
    """No MIGRATION_DATABASE_URL: the alias' own DATABASES entry, with its password never printed."""
    entry = {**entry_of_url(urls.parse(pg_url)), "PASSWORD": "s3cret-Django-pw"}
    own = settings_module(project, "own_settings", None, **entry)

    result = cli("upgrade", env=own)
    config = cli("config", env=own)

    assert result.code == 0, result.stderr
    started = result.one("run.started")
    assert started["database_source"] == "DATABASES['default'] in own_settings"
    assert started["database"].endswith("@127.0.0.1:5432/" + sqlalchemy.make_url(pg_url).database)
    assert len(applied(pg_url, "django")) == EXAMPLE_MIGRATIONS
    assert config.code == 0, config.stderr
    assert json.loads(config.stdout)["MIGRATION_TOOL"] == "django"
    for output in (result.stdout, result.stderr, config.stdout, config.stderr):
        assert "s3cret-Django-pw" not in output


def test_migration_database_url_replaces_an_entry_that_points_nowhere(cli: Cli, project: Path, pg_url: str) -> None:
    """MIGRATION_DATABASE_URL replaces a DATABASES entry that reaches nothing (69 without it, 0 with it)."""
    nowhere = settings_module(
        project, "nowhere_settings", None, ENGINE="django.db.backends.postgresql", NAME="x", HOST="127.0.0.1", PORT="1"
    )

    unreachable = cli("upgrade", env={**nowhere, "MIGRATION_CONNECT_TIMEOUT": "0"})
    replaced = cli("upgrade", env={**nowhere, "MIGRATION_DATABASE_URL": pg_url})

    assert unreachable.code == 69, unreachable.stderr
    assert replaced.code == 0, replaced.stderr
    assert replaced.one("run.started")["database_source"] == "MIGRATION_DATABASE_URL"
    assert len(applied(pg_url, "django")) == EXAMPLE_MIGRATIONS


def test_targets_app_and_app_migration_prefix(cli: Cli, project: Path, pg_url: str) -> None:
    """Django targets: app:prefix and app apply up to there; a target below the database or unknown is 78."""
    partial = cli("upgrade", env=env(pg_url, MIGRATION_TARGET="shop:0002"))
    assert partial.code == 0, partial.stderr
    rows = applied(pg_url, "django")
    assert "shop.0002_product_slug" in rows
    assert "shop.0003_product_name_index" not in rows

    app = cli("upgrade", env=env(pg_url, MIGRATION_TARGET="shop"))
    assert app.code == 0, app.stderr
    assert [e["revision"] for e in app.named("revision.applied")] == ["shop.0003_product_name_index"]

    backwards = cli("upgrade", env=env(pg_url, MIGRATION_TARGET="shop:0001"))
    assert backwards.code == 78
    assert "does not downgrade" in backwards.one("config.invalid")["error"]
    for target in ("shop:9", "nosuchapp", "+1"):
        result = cli("check", env=env(pg_url, MIGRATION_TARGET=target))
        assert result.code == 78, (target, result.stderr)
        assert "MIGRATION_TARGET" in result.one("config.invalid")["error"]


def test_a_failing_migration_exits_65_naming_it_and_keeps_the_earlier_ones(
    cli: Cli, project: Path, pg_url: str
) -> None:
    """A Django migration that fails: 65 naming it with its SQLSTATE; the earlier ones stay applied."""
    add_migration(project, "0004_broken", 'operations = [migrations.RunSQL("SELECT 1/0")]')

    result = cli("upgrade", env=env(pg_url))

    assert result.code == 65, result.stderr
    failed = result.one("revision.failed")
    assert failed["revision"] == "shop.0004_broken"
    assert failed["sqlstate"] == "22012"
    assert failed["partially_applied"] is False
    rows = applied(pg_url, "django")
    assert "shop.0003_product_name_index" in rows
    assert "shop.0004_broken" not in rows


RAISE_55P03 = "DO $$ BEGIN RAISE EXCEPTION 'held' USING ERRCODE = '55P03'; END $$"


def test_an_atomic_migration_is_retried_and_a_non_atomic_one_is_not(cli: Cli, project: Path, pg_url: str) -> None:
    """55P03 in an atomic Django migration is retried; in a non-atomic one it is not, and is partially applied."""
    add_migration(project, "0004_locked", f'operations = [migrations.RunSQL("{RAISE_55P03}")]')
    atomic = cli("upgrade", env=env(pg_url, MIGRATION_REVISION_RETRIES="1"))
    assert atomic.code == 65, atomic.stderr
    assert len(atomic.named("revision.retrying")) == 1
    assert atomic.one("revision.failed")["partially_applied"] is False

    (project / "shop" / "migrations" / "0004_locked.py").unlink()
    add_migration(
        project,
        "0004_half",
        f"""
        atomic = False
        operations = [
            migrations.RunSQL("CREATE TABLE half_done (id int)"),
            migrations.RunSQL("{RAISE_55P03}"),
        ]
        """,
    )
    half = cli("upgrade", env=env(pg_url, MIGRATION_REVISION_RETRIES="3"))

    assert half.code == 65, half.stderr
    assert half.named("revision.retrying") == []
    failed = half.one("revision.failed")
    assert failed["revision"] == "shop.0004_half"
    assert failed["partially_applied"] is True
    assert query(pg_url, "SELECT to_regclass('half_done') IS NOT NULL") == [(True,)]
    # The ledger remembers: the next upgrade refuses to guess, until the operator says what they found.
    again = cli("upgrade", env=env(pg_url))
    assert again.code == 65
    assert again.one("revision.interrupted")["revision"] == "shop.0004_half"
    resolved = cli("resolve", "--mark", "applied", env=env(pg_url))
    assert resolved.code == 0, resolved.stderr
    assert "shop.0004_half" in applied(pg_url, "django")
    assert cli("upgrade", env=env(pg_url)).one("upgrade.noop")


def test_the_ddl_lock_timeout_applies_to_djangos_session(cli: Cli, project: Path, pg_url: str) -> None:
    """A migration blocked by a lock fails fast with 55P03 (not after minutes) and is retried."""
    assert cli("upgrade", env=env(pg_url)).code == 0
    add_migration(
        project,
        "0004_product_stock",
        'operations = [migrations.AddField("product", "stock", models.IntegerField(default=0))]',
    )
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE shop_product IN ACCESS SHARE MODE")
        result = cli("upgrade", env=env(pg_url, MIGRATION_DDL_LOCK_TIMEOUT="0.5", MIGRATION_REVISION_RETRIES="1"))

    assert result.code == 65, result.stderr
    assert result.one("revision.failed")["sqlstate"] == "55P03"
    assert len(result.named("revision.retrying")) == 1
    assert "shop.0004_product_stock" not in applied(pg_url, "django")


def test_inconsistent_history_two_leaves_and_unknown_rows(cli: Cli, project: Path, pg_url: str) -> None:
    """Django: an unknown applied row is 66, an inconsistent history 78, and two leaf nodes in one app 78."""
    assert cli("upgrade", env=env(pg_url)).code == 0

    query(pg_url, "INSERT INTO django_migrations (app, name, applied) VALUES ('shop', '0009_gone', now())")
    unknown = cli("upgrade", env=env(pg_url))
    assert unknown.code == 66, unknown.stderr
    assert "shop.0009_gone" in unknown.one("revision.unknown")["error"]
    assert cli("upgrade", env=env(pg_url, MIGRATION_ALLOW_UNKNOWN_REVISION="true")).code == 0
    query(pg_url, "DELETE FROM django_migrations WHERE name = '0009_gone'")

    query(pg_url, "DELETE FROM django_migrations WHERE app = 'shop' AND name = '0001_initial'")
    inconsistent = cli("check", env=env(pg_url))
    assert inconsistent.code == 78, inconsistent.stderr
    assert "inconsistent migration history" in inconsistent.one("config.invalid")["error"]

    add_migration(project, "0003_rival", "operations = []", depends="0002_product_slug")
    conflict = cli("upgrade", env=env(pg_url))
    assert conflict.code == 78, conflict.stderr
    message = conflict.one("config.invalid")["error"]
    assert "0003_product_name_index, 0003_rival in shop" in message
    assert "makemigrations --merge" in message


def test_sigterm_in_a_slow_migration_rolls_back_and_frees_the_lock(cli: Cli, project: Path, pg_url: str) -> None:
    """SIGTERM inside a Django migration: 143, the migration rolled back and unrecorded, the lock freed."""
    add_migration(project, "0004_slow", 'operations = [migrations.RunSQL("SELECT pg_sleep(60)")]')
    started = time.monotonic()
    process = cli.start("upgrade", env=env(pg_url))
    sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%%'"
    wait_until(lambda: query(pg_url, sleeping)[0][0] == 1, 60, "the slow migration to run")

    process.send_signal(signal.SIGTERM)
    result = cli.finish(process, started, timeout=30)

    assert result.code == 143, result.stderr
    assert result.one("run.interrupted")["revision"] == "shop.0004_slow"
    assert "shop.0004_slow" not in applied(pg_url, "django")
    assert "shop.0003_product_name_index" in applied(pg_url, "django")
    assert advisory_locks_held(pg_url) == 0
    assert query(pg_url, sleeping)[0][0] == 0


def test_choosing_the_tool(cli: Cli, project: Path, tmp_path: Path) -> None:
    """auto with two projects is 78; Django without DJANGO_SETTINGS_MODULE or with an unknown alias is 78."""
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    (project / "alembic.ini").write_text("[alembic]\nscript_location = migrations\n")
    both = cli("check", env=env(url))
    assert both.code == 78
    assert "set MIGRATION_TOOL to alembic or django" in both.one("config.invalid")["error"]
    assert cli("check", env=env(url, MIGRATION_TOOL="django")).code == 1
    (project / "alembic.ini").unlink()

    missing = cli("check", env={"MIGRATION_TOOL": "django", "MIGRATION_DATABASE_URL": url})
    assert missing.code == 78
    assert "DJANGO_SETTINGS_MODULE is not set" in missing.one("config.invalid")["error"]

    alias = cli("check", env=env(url, MIGRATION_DJANGO_DATABASE="replica"))
    assert alias.code == 78
    assert "has no such DATABASES alias (it has 'default')" in alias.one("config.invalid")["error"]

    bad_app = settings_module(project, "bad_app_settings", url)
    (project / "bad_app_settings.py").write_text(
        (project / "bad_app_settings.py").read_text() + "INSTALLED_APPS = [*INSTALLED_APPS, 'nosuchapp']\n"
    )
    no_app = cli("check", env={"MIGRATION_DATABASE_URL": url, **bad_app})
    assert no_app.code == 78
    assert "django.setup()" in no_app.one("config.invalid")["error"]
    assert "nosuchapp" in no_app.one("config.invalid")["error"]

    broken = cli("check", env=env(url, DJANGO_SETTINGS_MODULE="mysite.nosuchsettings"))
    assert broken.code == 78
    assert "cannot import it" in broken.one("config.invalid")["error"]
    assert "Traceback" not in broken.stderr

    typo = project / "shop" / "migrations" / "0004_typo.py"
    typo.write_text("from django.db import migrations\nthis is not python\n")
    bad_file = cli("check", env=env(url))
    assert bad_file.code == 78
    assert "0004_typo.py" in bad_file.one("revisions.broken")["error"]


def test_a_django_run_imports_no_alembic(cli: Cli, project: Path, tmp_path: Path) -> None:
    """A Django run never imports Alembic."""
    code = "import sys, runner.cli\ncode = runner.cli.main(['check'])\nprint('RESULT', code, 'alembic' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=cli.env(env(f"sqlite:///{tmp_path / 'x.sqlite3'}")),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.splitlines()[-1] == "RESULT 1 False", result.stderr


def test_termination_message_and_metrics_have_the_alembic_shape(cli: Cli, project: Path, pg_url: str) -> None:
    """A Django run writes the same termination message and metrics as an Alembic run."""
    termination, textfile = cli.cwd / "termination-log", cli.cwd / "metrics.prom"
    termination.touch()
    result = cli(
        "upgrade",
        env=env(pg_url, MIGRATION_TERMINATION_LOG=str(termination), MIGRATION_METRICS_TEXTFILE=str(textfile)),
    )

    assert result.code == 0, result.stderr
    message = json.loads(termination.read_text())
    assert message["outcome"] == "success"
    assert message["to"] == EXAMPLE_LEAVES
    metrics = textfile.read_text()
    assert f'migration_runner_revisions_applied_total{{direction="up"}} {EXAMPLE_MIGRATIONS}.0' in metrics
    assert 'migration_runner_database_revision_info{revision="shop.0003_product_name_index"} 1.0' in metrics


def test_a_lost_connection_mid_migration_reconnects_and_finishes(cli: Cli, project: Path, pg_url: str) -> None:
    """Django's session killed in a migration: the runner reconnects, locks again, re-reads and applies it once."""
    add_migration(project, "0004_slowish", 'operations = [migrations.RunSQL("SELECT pg_sleep(3)")]')
    started = time.monotonic()
    process = cli.start("upgrade", env=env(pg_url))
    running = "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%%' AND pid <> pg_backend_pid()"
    wait_until(lambda: query(pg_url, running), 60, "the migration to run")
    query(pg_url, f"SELECT pg_terminate_backend(pid) FROM ({running}) AS m")

    result = cli.finish(process, started, timeout=60)

    assert result.code == 0, result.stderr
    assert result.named("database.reconnecting")
    assert applied(pg_url, "django").count("shop.0004_slowish") == 1
    assert [e["revision"] for e in result.named("revision.applied")].count("shop.0004_slowish") == 1


THIRD_PARTY = REPO / "tests" / "projects" / "thirdparty"


def third_party_env(url: str) -> dict[str, str]:
    """The third-party project's own variables, as its settings.py reads them: no MIGRATION_DATABASE_URL."""
    parsed = sqlalchemy.make_url(url)
    return {
        "DJANGO_SETTINGS_MODULE": "site_settings.settings",
        "DJANGO_DB_NAME": parsed.database or "",
        "DJANGO_DB_HOST": parsed.host or "",
        "DJANGO_DB_PORT": str(parsed.port or ""),
        "DJANGO_DB_USER": parsed.username or "",
    }


@pytest.mark.timeout(300)
def test_a_project_with_third_party_apps_migrates_unmodified_ten_at_once_as_manage_py_does(
    cli: Cli, pg_databases: Callable[[], str]
) -> None:
    """Its own settings.py: admin, sessions, sites, DRF authtoken, taggit, reversion, guardian, axes, django-otp,
    allauth, django-oauth-toolkit and waffle (89 migrations)."""
    ours, theirs = pg_databases(), pg_databases()
    reference = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=THIRD_PARTY,
        env=cli.env(third_party_env(theirs)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reference.returncode == 0, reference.stderr

    started = time.monotonic()
    processes = [cli.start("upgrade", env=third_party_env(ours), cwd=THIRD_PARTY) for _ in range(10)]
    results = [cli.finish(process, started, timeout=240) for process in processes]

    assert [r.code for r in results] == [0] * 10, [r.stderr[-2000:] for r in results if r.code]
    rows = applied(ours, "django")
    assert rows == applied(theirs, "django")
    assert len(rows) == len(set(rows)) > 80
    assert sum(len(r.named("revision.applied")) for r in results) == len(rows)
    assert [t for t in tables(ours) if t != "migration_runner_history"] == tables(theirs)
    assert permissions(ours) == permissions(theirs)
    assert query(ours, "SELECT domain FROM django_site") == query(theirs, "SELECT domain FROM django_site")


def test_a_noop_skips_the_system_checks_unless_asked(cli: Cli, project: Path, pg_url: str) -> None:
    """migrate runs Django's system checks when it applies; on a no-op only MIGRATION_DJANGO_SYSTEM_CHECKS does."""
    assert cli("upgrade", env=env(pg_url)).code == 0
    failing = (
        "\n\nfrom django.core import checks\n\n\n@checks.register()\n"
        "def fails(**kwargs):\n    return [checks.Error('broken on purpose', id='shop.E001')]\n"
    )
    (project / "shop" / "apps.py").write_text((project / "shop" / "apps.py").read_text() + failing)

    skipped = cli("upgrade", env=env(pg_url))
    checked = cli("upgrade", env=env(pg_url, MIGRATION_DJANGO_SYSTEM_CHECKS="true"))

    assert skipped.code == 0, skipped.stderr
    assert skipped.one("upgrade.noop")
    assert checked.code == 78, checked.stderr
    assert "shop.E001: broken on purpose" in checked.one("project.broken")["error"]
