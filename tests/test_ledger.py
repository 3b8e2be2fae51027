"""The ledger records each applied revision's checksum, and an older ledger gains the columns in place."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import jsonschema
import pytest
from support import REPO, Cli, copy_django_example, make_project, mysql_query, query, version

from runner import checksum

ROWS = "SELECT revision, checksum, checksum_version FROM migration_runner_history ORDER BY id"


def file_checksum(project: Path, revision: str) -> str:
    return checksum.of_file(project / "migrations" / "versions" / f"{revision}_r.py")


def test_each_applied_revision_has_its_files_checksum(cli: Cli, pg_url: str) -> None:
    """Each ledger row of an applied revision holds its file's checksum and the checksum version."""
    make_project(cli.cwd, revisions=3)

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0, result.stderr
    assert query(pg_url, ROWS) == [(r, file_checksum(cli.cwd, r), checksum.VERSION) for r in ("0001", "0002", "0003")]


def test_on_mariadb_too(cli: Cli, mysql_url: str) -> None:
    """On MariaDB, too, each ledger row holds its file's checksum."""
    make_project(cli.cwd, revisions=2)

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": mysql_url})

    assert result.code == 0, result.stderr
    assert mysql_query(mysql_url, ROWS) == [(r, file_checksum(cli.cwd, r), checksum.VERSION) for r in ("0001", "0002")]


def test_an_older_ledger_gains_the_checksum_columns(cli: Cli, pg_url: str) -> None:
    """The columns are added in place, and the revisions recorded without a checksum are adopted."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0
    query(
        pg_url,
        "ALTER TABLE migration_runner_history DROP COLUMN checksum, DROP COLUMN checksum_version, "
        "DROP COLUMN source_sha256",
    )
    make_project(cli.cwd, revisions=3)

    result = cli("upgrade", env=env)

    assert result.code == 0, result.stderr
    assert query(pg_url, ROWS) == [
        ("0001", None, None),
        ("0002", None, None),
        ("0001", file_checksum(cli.cwd, "0001"), checksum.VERSION),
        ("0002", file_checksum(cli.cwd, "0002"), checksum.VERSION),
        ("0003", file_checksum(cli.cwd, "0003"), checksum.VERSION),
    ]
    assert result.one("ledger.adopted")["revisions"] == ["0001", "0002"]


def test_django_migrations_have_their_files_checksum(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Each Django migration's ledger row holds its file's checksum."""
    project = copy_django_example(tmp_path / "django")
    env = {"MIGRATION_DATABASE_URL": pg_url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}

    result = cli("upgrade", env=env, cwd=project)

    assert result.code == 0, result.stderr
    rows = {revision: (value, version) for revision, value, version in query(pg_url, ROWS)}
    initial = checksum.of_file(project / "shop" / "migrations" / "0001_initial.py")
    assert rows["shop.0001_initial"] == (initial, checksum.VERSION)
    assert all(value is not None and version == checksum.VERSION for value, version in rows.values())


HISTORY_SCHEMA = json.loads((REPO / "docs" / "history.schema.json").read_text())


def test_history_lists_the_ledger_newest_first(cli: Cli, pg_url: str) -> None:
    """history lists the ledger newest first, as JSON valid against its schema and as text, one revision on request."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    upgraded = cli("upgrade", env=env)
    reverted = cli("downgrade", "-1", env=env)

    document = cli("history", "--json", env=env)
    one = cli("history", "0003", "--json", env=env)
    text = cli("history", env=env)

    assert (upgraded.code, reverted.code, document.code, one.code, text.code) == (0, 0, 0, 0, 0), document.stderr
    history = json.loads(document.stdout)
    jsonschema.validate(history, HISTORY_SCHEMA)
    rows = [(r["revision"], r["direction"], r["outcome"]) for r in history["rows"]]
    assert rows == [
        ("0003", "down", "reverted"),
        ("0003", "up", "applied"),
        ("0002", "up", "applied"),
        ("0001", "up", "applied"),
    ]
    newest = history["rows"][0]
    assert newest["run_id"] == reverted.one("run.started")["run_id"]
    assert newest["checksum"] == file_checksum(cli.cwd, "0003")
    assert all(r["duration_seconds"] is not None and r["duration_seconds"] >= 0 for r in history["rows"])
    assert [r["direction"] for r in json.loads(one.stdout)["rows"]] == ["down", "up"]
    header, newest_line = text.stdout.splitlines()[:2]
    assert header.split() == [
        "started",
        "(UTC)",
        "direction",
        "outcome",
        "revision",
        "duration",
        "run",
        "where",
        "checksum",
    ]
    assert newest_line.split()[1:4] == ["down", "reverted", "0003"]
    # What the ledger says is applied is what the version table says.
    net = {r["revision"] for r in history["rows"] if r["outcome"] == "applied"} - {
        r["revision"] for r in history["rows"] if r["outcome"] == "reverted"
    }
    assert sorted(net) == ["0001", "0002"]
    assert version(pg_url) == ["0002"]


@pytest.mark.parametrize("family", ["sqlite", "mariadb"])
def test_history_gives_every_timestamp_its_offset(cli: Cli, mysql_url: str, family: str, tmp_path: Path) -> None:
    """MySQL's DATETIME and SQLite's text keep no zone: what they hold is UTC, and history says so."""
    make_project(cli.cwd, revisions=2)
    url = f"sqlite:///{tmp_path / 'app.db'}" if family == "sqlite" else mysql_url
    env = {"MIGRATION_DATABASE_URL": url}
    assert cli("upgrade", env=env).code == 0

    document = cli("history", "--json", env=env)
    text = cli("history", env=env)

    rows = json.loads(document.stdout)["rows"]
    jsonschema.validate(json.loads(document.stdout), HISTORY_SCHEMA, format_checker=jsonschema.FormatChecker())
    for row in rows:
        for key in ("started_at", "finished_at"):
            assert dt.datetime.fromisoformat(row[key]).utcoffset() == dt.timedelta(0), row[key]
    assert [line.split()[0][-6:] for line in text.stdout.splitlines()[1:]] == ["+00:00", "+00:00"]


def test_history_never_shows_a_password_an_older_row_recorded(cli: Cli, pg_url: str) -> None:
    """A row's error, written by an older runner or by hand, passes the same redaction as every output."""
    make_project(cli.cwd, revisions=1)
    assert cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url}).code == 0
    secret = "Sup3r-S3cret-pw"  # noqa: S105  (trust authentication takes any password)
    query(
        pg_url,
        "UPDATE migration_runner_history SET error = "
        f"'could not copy from postgresql://postgres:{secret}@db.example/shop'",
    )
    url = pg_url.replace("postgres@", f"postgres:{secret}@", 1)

    document = cli("history", "--json", env={"MIGRATION_DATABASE_URL": url})

    assert document.code == 0, document.stderr
    assert "could not copy from postgresql://postgres:***@db.example/shop" in document.stdout
    assert secret not in document.stdout + document.stderr


def test_history_without_a_ledger_is_empty(cli: Cli, pg_url: str) -> None:
    """history on a database without a ledger is an empty list, exit 0."""
    make_project(cli.cwd, revisions=1)

    result = cli("history", "--json", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {"schema_version": 1, "tool": "alembic", "rows": []}


def test_ten_runners_at_once_leave_one_row_per_revision(cli: Cli, pg_url: str) -> None:
    """Ten runners at once on PostgreSQL leave one ledger row per revision."""
    make_project(cli.cwd, revisions=20)
    env = {"MIGRATION_DATABASE_URL": pg_url}

    started = time.monotonic()
    processes = [cli.start("upgrade", env=env) for _ in range(10)]
    results = [cli.finish(process, started, timeout=90) for process in processes]

    assert [r.code for r in results] == [0] * 10, [r.stderr for r in results]
    rows = query(pg_url, "SELECT revision, count(*) FROM migration_runner_history GROUP BY revision ORDER BY revision")
    assert rows == [(f"{k:04d}", 1) for k in range(1, 21)]
    assert version(pg_url) == ["0020"]


def test_ten_runners_at_once_on_mariadb_leave_one_row_per_revision(cli: Cli, mysql_url: str) -> None:
    """Ten runners at once on MariaDB leave one applied ledger row per revision."""
    make_project(cli.cwd, revisions=10)
    env = {"MIGRATION_DATABASE_URL": mysql_url}

    started = time.monotonic()
    processes = [cli.start("upgrade", env=env) for _ in range(10)]
    results = [cli.finish(process, started, timeout=90) for process in processes]

    assert [r.code for r in results] == [0] * 10, [r.stderr for r in results]
    sql = (
        "SELECT revision, outcome, count(*) FROM migration_runner_history GROUP BY revision, outcome ORDER BY revision"
    )
    assert mysql_query(mysql_url, sql) == [(f"{k:04d}", "applied", 1) for k in range(1, 11)]


def _second_project(root: Path) -> Path:
    """A project with the same revision ids as make_project's, but tables of its own (b_applied_log, b_t_...)."""
    make_project(root, revisions=3)
    for path in (root / "migrations" / "versions").glob("*.py"):
        text = path.read_text().replace("applied_log", "b_applied_log").replace('"t_', '"b_t_')
        path.write_text(text + "\n# project B\n")
    return root


def test_two_projects_in_one_schema_never_read_each_others_ledger_rows(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Separate MIGRATION_VERSION_TABLE values and the same revision ids: drift, blocking, resolve and history are
    each project's own (A's unedited check reported B's files as drifted, and B's failed row blocked A)."""
    a_dir, b_dir = tmp_path / "a", _second_project(tmp_path / "b")
    make_project(a_dir, revisions=3)
    (b_dir / "migrations" / "versions" / "0003_r.py").write_text(
        (b_dir / "migrations" / "versions" / "0003_r.py")
        .read_text()
        .replace("def upgrade():\n", 'def upgrade():\n    op.execute("COMMIT")\n    op.execute("SELECT 1/0")\n', 1)
    )
    a = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_VERSION_TABLE": "a_version", "MIGRATION_DRIFT": "fail"}
    b = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_VERSION_TABLE": "b_version", "MIGRATION_DRIFT": "fail"}
    assert cli("upgrade", env=a, cwd=a_dir).code == 0
    failed = cli("upgrade", env=b, cwd=b_dir)
    assert failed.code == 65 and failed.one("revision.failed")["partially_applied"] is True

    checked = cli("check", env=a, cwd=a_dir)
    assert checked.code == 0, checked.stdout
    assert not checked.named("revision.drifted")
    assert cli("upgrade", env=a, cwd=a_dir).code == 0  # B's unfinished row does not block A
    assert cli("resolve", "--mark", "not-applied", env=a, cwd=a_dir).one("resolve.nothing")
    assert cli("upgrade", env=b, cwd=b_dir).code == 65  # still B's to resolve
    history = json.loads(cli("history", "--output", "json", env=a, cwd=a_dir).stdout)
    assert [(row["revision"], row["outcome"]) for row in history["rows"]] == [
        ("0003", "applied"),
        ("0002", "applied"),
        ("0001", "applied"),
    ]
    scopes = query(pg_url, "SELECT DISTINCT version_table FROM migration_runner_history ORDER BY 1")
    assert scopes == [("a_version",), ("b_version",)]


def test_an_older_ledger_without_version_tables_is_claimed_in_place(cli: Cli, pg_url: str) -> None:
    """Rows an older runner wrote name no version table: the next run under the lock claims them for its project."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", "0001", env=env).code == 0
    query(pg_url, "ALTER TABLE migration_runner_history DROP COLUMN version_table")  # as an older runner left it
    assert cli("check", "0001", env=env).code == 0  # read-only on the older ledger

    assert cli("upgrade", env=env).code == 0

    rows = query(pg_url, "SELECT revision, version_table FROM migration_runner_history ORDER BY id")
    assert rows == [("0001", "alembic_version"), ("0002", "alembic_version")]
