"""Drift: an applied revision's file changed since it ran. Formatting is not drift; a changed operation is.

Real PostgreSQL and MariaDB, Alembic and Django: the runner as a user runs it,
the ledger as the database holds it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support import REPO, Cli, copy_django_example, make_project, mysql_query, query, version, wait_until

from runner import checksum

RESULT_SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
HISTORY_SCHEMA = json.loads((REPO / "docs" / "history.schema.json").read_text())
LEDGER = "SELECT revision, outcome, checksum FROM migration_runner_history ORDER BY id"


def revision_file(project: Path, revision: str) -> Path:
    return project / "migrations" / "versions" / f"{revision}_r.py"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path}"
    path.write_text(text.replace(old, new))


def reformat(path: Path) -> None:
    """What a formatter and an editor do: comments, quotes, blank lines, re-indented arguments, CRLF."""
    text = path.read_text()
    text = text.replace(
        'op.create_table("t_0002", sa.Column("id", sa.Integer))',
        "# the table of revision 2\n    op.create_table(\n        't_0002',\n"
        "        sa.Column('id', sa.Integer),\n    )\n",
    )
    text = text.replace("\n\ndef downgrade", "\n\n\n# reverted by dropping it\ndef downgrade")
    assert "t_0002'," in text
    path.write_bytes(text.replace("\n", "\r\n").encode())


def upgrade(cli: Cli, env: dict[str, str], *args: str, cwd: Path | None = None) -> tuple[Any, dict[str, Any]]:
    result = cli("upgrade", "--output", "json", *args, env=env, cwd=cwd)
    document = json.loads(result.stdout)
    jsonschema.validate(document, RESULT_SCHEMA)
    return result, document


def test_reformatting_a_revision_is_not_drift(cli: Cli, pg_url: str) -> None:
    """A reformatted applied revision is no drift, even under MIGRATION_DRIFT=fail."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    reformat(revision_file(cli.cwd, "0002"))

    result, document = upgrade(cli, env)
    failing = cli("check", env={**env, "MIGRATION_DRIFT": "fail"})

    assert result.code == 0, result.stderr
    assert result.named("revision.drifted") == []
    assert document["drift"] == []
    assert failing.code == 0, failing.stderr
    assert failing.named("revision.drifted") == []


def test_a_changed_operation_is_drift_and_warn_exits_0_naming_it(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A changed applied revision is drift: warn logs revision.drifted with both checksums and exits 0."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    recorded = {r: c for r, _, c in query(pg_url, LEDGER)}
    edit(revision_file(cli.cwd, "0002"), 'sa.Column("id", sa.Integer)', 'sa.Column("id", sa.BigInteger)')  # a type
    edit(revision_file(cli.cwd, "0003"), 'op.create_table("t_0003"', 'op.create_table("t_three"')  # a table name
    textfile = tmp_path / "metrics.prom"

    result, document = upgrade(cli, {**env, "MIGRATION_METRICS_TEXTFILE": str(textfile)})
    checked = cli("check", env=env)

    assert result.code == 0, result.stderr
    drifted = result.named("revision.drifted")
    assert [(e["revision"], e["level"]) for e in drifted] == [("0002", "warning"), ("0003", "warning")]
    assert drifted[0]["recorded_checksum"] == recorded["0002"]
    assert drifted[0]["current_checksum"] == checksum.of_file(revision_file(cli.cwd, "0002"))
    assert [d["revision"] for d in document["drift"]] == ["0002", "0003"]
    assert re.search(r"^migration_runner_drifted_revisions 2\.0$", textfile.read_text(), re.M)
    assert checked.code == 0 and [e["revision"] for e in checked.named("revision.drifted")] == ["0002", "0003"]


def test_fail_exits_65_before_any_change(cli: Cli, pg_url: str) -> None:
    """MIGRATION_DRIFT=fail with a drifted revision: 65 naming it, before any pending revision is applied."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_DRIFT": "fail"}
    assert cli("upgrade", env=env).code == 0
    edit(revision_file(cli.cwd, "0001"), 'sa.Column("pid", sa.Integer)', 'sa.Column("pid", sa.BigInteger)')
    make_project_keeping(cli.cwd, revisions=3)
    rows_before = query(pg_url, LEDGER)

    result, document = upgrade(cli, env)
    checked = cli("check", env=env)

    assert result.code == 65, result.stderr
    refused = result.one("revision.drift_refused")
    assert "0001" in refused["error"] and "migration-runner accept" in refused["error"]
    assert document["error"]["class"] == "RevisionDrifted" and document["error"]["revision"] == "0001"
    assert [d["revision"] for d in document["drift"]] == ["0001"]
    assert version(pg_url) == ["0002"]  # 0003 was not applied
    assert query(pg_url, "SELECT to_regclass('t_0003')") == [(None,)]
    assert query(pg_url, LEDGER) == rows_before
    assert checked.code == 65


def make_project_keeping(root: Path, revisions: int) -> None:
    """Add revisions to a project without rewriting the files it has (make_project writes them all)."""
    versions = root / "migrations" / "versions"
    kept = {path: path.read_bytes() for path in versions.glob("*.py")}
    make_project(root, revisions=revisions)
    for path, data in kept.items():
        path.write_bytes(data)


def test_off_skips_the_comparison(cli: Cli, pg_url: str) -> None:
    """MIGRATION_DRIFT=off compares nothing and reports no drift."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_DRIFT": "off"}
    assert cli("upgrade", env=env).code == 0
    edit(revision_file(cli.cwd, "0002"), '"t_0002"', '"t_two"')

    result, document = upgrade(cli, env)

    assert result.code == 0, result.stderr
    assert result.named("revision.drifted") == []
    assert document["drift"] is None


def test_a_database_migrated_before_the_ledger_is_adopted_without_drift(cli: Cli, pg_url: str) -> None:
    """`alembic upgrade head` first (no ledger), then the runner: adopted, then compared like any other."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    ini = cli.cwd / "alembic.ini"  # plain Alembic reads its URL from the ini
    plain_url = pg_url.replace("postgresql://", "postgresql+psycopg://")
    ini.write_text(re.sub(r"^sqlalchemy\.url\s*=.*$", f"sqlalchemy.url = {plain_url}", ini.read_text(), flags=re.M))
    alembic = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=cli.cwd,
        env=cli.env({}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alembic.returncode == 0, alembic.stderr
    assert version(pg_url) == ["0003"]
    assert query(pg_url, "SELECT to_regclass('migration_runner_history')") == [(None,)]

    adopting, document = upgrade(cli, env)
    again = cli("upgrade", env=env)
    edit(revision_file(cli.cwd, "0002"), '"t_0002"', '"t_two"')
    drifting = cli("upgrade", env=env)

    assert adopting.code == 0, adopting.stderr
    assert adopting.one("ledger.adopted")["revisions"] == ["0001", "0002", "0003"]
    assert adopting.named("revision.drifted") == [] and document["drift"] == []
    assert [(r, o) for r, o, _ in query(pg_url, LEDGER)] == [
        ("0001", "adopted"),
        ("0002", "adopted"),
        ("0003", "adopted"),
    ]
    assert again.code == 0 and again.named("ledger.adopted") == []
    assert [e["revision"] for e in drifting.named("revision.drifted")] == ["0002"]


def test_accept_records_the_reviewed_file_and_clears_the_drift(cli: Cli, pg_url: str) -> None:
    """accept records the edited file's checksum in the ledger: the drift is gone, and the history keeps the change."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    old = checksum.of_file(revision_file(cli.cwd, "0002"))
    edit(revision_file(cli.cwd, "0002"), '"t_0002"', '"t_two"')
    assert cli("upgrade", env=env).named("revision.drifted")

    accepted = cli("accept", "0002", env=env)
    after, document = upgrade(cli, env)
    history = json.loads(cli("history", "0002", "--json", env=env).stdout)
    jsonschema.validate(history, HISTORY_SCHEMA)
    not_applied = cli("accept", "0009", env=env)

    assert accepted.code == 0, accepted.stderr
    event = accepted.one("revision.accepted")
    new = checksum.of_file(revision_file(cli.cwd, "0002"))
    assert (event["previous_checksum"], event["checksum"], event["changed"]) == (old, new, True)
    assert after.code == 0 and after.named("revision.drifted") == [] and document["drift"] == []
    assert [(r["outcome"], r["checksum"]) for r in history["rows"]] == [("accepted", new), ("applied", old)]
    assert not_applied.code == 78


def test_sql_files_a_revision_loads_are_in_its_checksum(cli: Cli, pg_url: str) -> None:
    """Reformatted SQL (whitespace, comments) is not drift; a changed statement is."""
    body = 'op.execute((Path(__file__).parent.parent / "sql" / "0002.sql").read_text())'
    make_project(cli.cwd, revisions=2, bodies={2: body})
    edit(revision_file(cli.cwd, "0002"), "import os\n", "import os\nfrom pathlib import Path\n")
    sql = cli.cwd / "migrations" / "sql" / "0002.sql"
    sql.parent.mkdir()
    sql.write_text("CREATE TABLE t_0002 (id integer, name text DEFAULT 'a  b');\n")
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0

    sql.write_text(
        "-- the table of revision 2\nCREATE TABLE t_0002 (\n    id integer,\n    name text DEFAULT 'a  b'\n);\n"
    )
    reformatted = cli("upgrade", env=env)
    sql.write_text("CREATE TABLE t_0002 (id bigint, name text DEFAULT 'a  b');\n")
    changed = cli("upgrade", env=env)

    assert reformatted.code == 0 and reformatted.named("revision.drifted") == []
    assert changed.code == 0 and [e["revision"] for e in changed.named("revision.drifted")] == ["0002"]


def test_on_mariadb(cli: Cli, mysql_url: str) -> None:
    """Drift on MariaDB: reformatting is none, an edit warns, fail refuses, accept clears it."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": mysql_url}
    assert cli("upgrade", env=env).code == 0
    reformat(revision_file(cli.cwd, "0002"))
    reformatted = cli("upgrade", env=env)
    edit(revision_file(cli.cwd, "0002"), "'t_0002'", "'t_two'")
    warned = cli("upgrade", env=env)
    refused = cli("check", env={**env, "MIGRATION_DRIFT": "fail"})
    accepted = cli("accept", "0002", env=env)
    cleared = cli("check", env={**env, "MIGRATION_DRIFT": "fail"})

    assert reformatted.code == 0 and reformatted.named("revision.drifted") == []
    assert warned.code == 0 and [e["revision"] for e in warned.named("revision.drifted")] == ["0002"]
    assert refused.code == 65
    assert accepted.code == 0 and cleared.code == 0, cleared.stderr
    assert [row[1] for row in mysql_query(mysql_url, LEDGER)] == ["applied", "applied", "accepted"]


def django_env(url: str) -> dict[str, str]:
    return {"MIGRATION_DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}


def test_django_formatting_drift_adoption_and_accept(cli: Cli, tmp_path: Path) -> None:
    """Django on its own SQLite database: `manage.py migrate` first (adopted), reformatting is not drift, a
    changed field is, accept clears it."""
    project = copy_django_example(tmp_path / "django")
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}  # DATABASES: db.sqlite3 beside manage.py
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=project,
        env=cli.env(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    initial = project / "shop" / "migrations" / "0001_initial.py"

    adopting, document = upgrade(cli, env, cwd=project)
    text = initial.read_text()
    initial.write_bytes(
        text.replace("'", '"')
        .replace("\n", "\r\n")
        .replace("    initial", "    # made by Django\n    initial")
        .encode()
    )
    reformatted = cli("check", env={**env, "MIGRATION_DRIFT": "fail"}, cwd=project)
    edit(initial, "max_length=200", "max_length=300")
    warned = cli("upgrade", env=env, cwd=project)
    accepted = cli("accept", "shop:0001_initial", env=env, cwd=project)
    cleared = cli("check", env={**env, "MIGRATION_DRIFT": "fail"}, cwd=project)

    assert adopting.code == 0, adopting.stderr
    assert "shop.0001_initial" in adopting.one("ledger.adopted")["revisions"]
    assert document["drift"] == []
    assert reformatted.code == 0, reformatted.stderr
    assert reformatted.named("revision.drifted") == []
    assert warned.code == 0 and [e["revision"] for e in warned.named("revision.drifted")] == ["shop.0001_initial"]
    assert accepted.code == 0, accepted.stderr
    assert accepted.one("revision.accepted")["revision"] == "shop.0001_initial"
    assert cleared.code == 0, cleared.stderr


def test_django_fail_exits_65_before_any_change(cli: Cli, mysql_url: str, tmp_path: Path) -> None:
    """A drifted Django migration with MIGRATION_DRIFT=fail: 65 naming it, the pending migration not applied."""
    project = copy_django_example(tmp_path / "django")
    env = django_env(mysql_url)
    assert cli("upgrade", "shop:0002", env=env, cwd=project).code == 0
    edit(project / "shop" / "migrations" / "0002_product_slug.py", "'slug'", "'handle'")

    refused = cli("upgrade", env={**env, "MIGRATION_DRIFT": "fail"}, cwd=project)

    assert refused.code == 65, refused.stderr
    assert refused.one("revision.drift_refused")["revision"] == "shop.0002_product_slug"
    applied = mysql_query(mysql_url, "SELECT name FROM django_migrations WHERE app = 'shop' ORDER BY name")
    assert applied == [("0001_initial",), ("0002_product_slug",)]  # 0003 was not applied


@pytest.mark.timeout(90)
def test_sigkill_mid_revision_on_postgresql_leaves_no_ledger_row_without_its_revision(cli: Cli, pg_url: str) -> None:
    """The row commits in the revision's transaction: a killed runner leaves neither; the next run applies it."""
    make_project(
        cli.cwd,
        revisions=3,
        bodies={2: 'op.create_table("t_0002", sa.Column("id", sa.Integer))\nop.execute("SELECT pg_sleep(30)")'},
    )
    env = {"MIGRATION_DATABASE_URL": pg_url}
    runner = cli.start("upgrade", env=env)

    def sleeping() -> list[tuple[Any, ...]]:
        return query(pg_url, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%'")

    wait_until(sleeping, 30, "revision 2's pg_sleep to run")
    runner.kill()
    runner.communicate(timeout=10)
    rows_after_kill = [r for r, _, _ in query(pg_url, LEDGER)]
    versions_after_kill = version(pg_url)
    for (pid,) in sleeping():  # the server would sleep to the end before it sees the client is gone
        query(pg_url, "SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not sleeping(), 10, "the killed runner's session to end")
    edit(revision_file(cli.cwd, "0002"), 'op.execute("SELECT pg_sleep(30)")', "pass")
    rerun = cli("upgrade", env=env)

    assert rows_after_kill == ["0001"] and versions_after_kill == ["0001"]
    assert rerun.code == 0, rerun.stderr
    assert rerun.named("lock.waiting") == []  # the killed runner's lock went with its session
    assert [(r, o) for r, o, _ in query(pg_url, LEDGER)] == [
        ("0001", "applied"),
        ("0002", "applied"),
        ("0003", "applied"),
    ]
    assert version(pg_url) == ["0003"]


SLOW_DJANGO_MIGRATION = """from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "0003_product_name_index")]
    operations = [
        migrations.RunSQL("CREATE TABLE shop_slow (id integer)", "DROP TABLE shop_slow"),
        migrations.RunSQL("SELECT pg_sleep(30)", migrations.RunSQL.noop),
    ]
"""


@pytest.mark.timeout(120)
def test_sigkill_mid_django_migration_on_postgresql_leaves_no_ledger_row_without_it(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """Django too: the ledger row is written on the migration's own cursor, in its transaction."""
    project = copy_django_example(tmp_path / "django")
    slow = project / "shop" / "migrations" / "0004_slow.py"
    slow.write_text(SLOW_DJANGO_MIGRATION)
    env = django_env(pg_url)
    runner = cli.start("upgrade", env=env, cwd=project)

    def sleeping() -> list[tuple[Any, ...]]:
        return query(pg_url, "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%'")

    wait_until(sleeping, 60, "the slow migration's pg_sleep to run")
    runner.kill()
    runner.communicate(timeout=10)
    ledger_after_kill = {r for r, _, _ in query(pg_url, LEDGER)}
    recorded_after_kill = {f"{a}.{n}" for a, n in query(pg_url, "SELECT app, name FROM django_migrations")}
    for (pid,) in sleeping():
        query(pg_url, "SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(lambda: not sleeping(), 10, "the killed runner's session to end")
    slow.write_text(SLOW_DJANGO_MIGRATION.replace('"SELECT pg_sleep(30)"', '"SELECT 1"'))
    rerun = cli("upgrade", env=env, cwd=project)

    assert "shop.0004_slow" not in ledger_after_kill
    assert ledger_after_kill == recorded_after_kill  # every ledger row has its migration, and back
    assert rerun.code == 0, rerun.stderr
    rows = query(pg_url, "SELECT revision, count(*) FROM migration_runner_history GROUP BY revision")
    assert dict(rows)["shop.0004_slow"] == 1 and {count for _, count in rows} == {1}


def test_an_emptied_or_rewound_version_table_is_refused_naming_the_ledger_and_the_ways_out(
    cli: Cli, pg_url: str
) -> None:
    """Issue 23: the version table emptied under a ledger that records 0001-0005 reran 0001 and failed on its table."""
    make_project(cli.cwd, revisions=5)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    query(pg_url, "DELETE FROM alembic_version")

    emptied = cli("upgrade", env=env)
    query(pg_url, "INSERT INTO alembic_version VALUES ('0003')")
    rewound = cli("upgrade", env=env)
    stamped = cli("resolve", "--mark", "applied", env=env)
    after_stamp = cli("upgrade", env=env)

    assert emptied.code == 65, emptied.stderr
    failure = emptied.one("version_table.rewound")
    assert "0005" in failure["error"] and "stamp" in failure["error"] and "resolve" in failure["error"]
    assert "applied at" in failure["error"] or " at " in failure["error"]
    assert query(pg_url, "SELECT count(*) FROM applied_log") == [(5,)], "nothing may run again"
    assert rewound.code == 65 and rewound.one("version_table.rewound")["revisions"] == ["0004", "0005"]
    assert stamped.code == 0, stamped.stderr
    assert version(pg_url) == ["0005"]
    assert after_stamp.code == 0 and after_stamp.named("version_table.rewound") == []
    assert query(pg_url, "SELECT count(*) FROM applied_log") == [(5,)]


def test_resolve_not_applied_after_a_rewind_lets_the_next_upgrade_run_them_again(cli: Cli, pg_url: str) -> None:
    """The other way out: the changes are gone too (restored from a backup), so the revisions run again."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    query(pg_url, "DROP TABLE t_0002, t_0003")
    query(pg_url, "UPDATE alembic_version SET version_num = '0001'")
    query(pg_url, "DELETE FROM applied_log WHERE revision <> '0001'")

    refused = cli("upgrade", env=env)
    resolved = cli("resolve", "--mark", "not-applied", env=env)
    again = cli("upgrade", env=env)

    assert refused.code == 65 and refused.one("version_table.rewound")["revisions"] == ["0002", "0003"]
    assert resolved.code == 0, resolved.stderr
    assert again.code == 0, again.stderr
    assert version(pg_url) == ["0003"]
    assert query(pg_url, "SELECT revision FROM applied_log ORDER BY revision") == [("0001",), ("0002",), ("0003",)]


def test_a_downgrade_is_no_rewind(cli: Cli, pg_url: str) -> None:
    """The runner's own downgrade records its down rows: the next upgrade runs the reverted revisions as usual."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    assert cli("downgrade", "0001", env=env).code == 0
    again = cli("upgrade", env=env)
    assert again.code == 0, again.stderr
    assert again.named("version_table.rewound") == []
