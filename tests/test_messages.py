"""What a user reads when something fails: the failed statement and its line, the URL as they wrote it, the help."""

from __future__ import annotations

from pathlib import Path

import pytest
from faults import free_port
from hypothesis import assume, given
from hypothesis import strategies as st
from support import Cli, copy_django_example, make_project

from runner import drivers
from runner.errors import ExitCode


def line_of(path: Path, text: str) -> int:
    return next(number for number, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_a_failed_revision_names_its_statement_and_its_file_and_line(cli: Cli, pg_url: str) -> None:
    """`relation "orderz" does not exist` says where: the revision file and line, and the statement."""
    make_project(cli.cwd, 2, bodies={2: 'op.execute("INSERT INTO orderz (id) VALUES (1)")'})
    revision = cli.cwd / "migrations" / "versions" / "0002_r.py"

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == ExitCode.MIGRATION_FAILED
    failed = result.one("revision.failed")
    where = f"migrations/versions/0002_r.py:{line_of(revision, 'orderz')}"
    assert failed["revision"] == "0002" and failed["sqlstate"] == "42P01"
    assert failed["file"] == where
    assert failed["statement"] == "INSERT INTO orderz (id) VALUES (1)"
    assert f"at {where}" in failed["error"] and "in: INSERT INTO orderz (id) VALUES (1)" in failed["error"]
    assert '"orderz" does not exist' in failed["error"]


def test_a_long_statement_is_cut_and_a_password_in_it_is_redacted(cli: Cli, pg_url: str) -> None:
    """At most 300 characters, one line; `PASSWORD '...'` shows as `PASSWORD '***'` in every output."""
    secret = "Zq9-unique-secret-" + "x" * 290  # straddles the cut: redaction comes first
    body = 'op.execute("""ALTER ROLE no_such_role_here\n    PASSWORD \'' + secret + '\'""")'
    make_project(cli.cwd, 1, bodies={1: body})

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == ExitCode.MIGRATION_FAILED
    failed = result.one("revision.failed")
    assert failed["statement"] == "ALTER ROLE no_such_role_here PASSWORD '***'"
    assert "Zq9-unique-secret" not in result.stdout + result.stderr


def test_shown_statement_redacts_before_it_cuts() -> None:
    long = "UPDATE t SET x = 1 WHERE y IN (" + ", ".join(str(n) for n in range(200)) + ")"
    shown = drivers.shown_statement(long)
    assert shown is not None and len(shown) == drivers.STATEMENT_SHOWN and shown.endswith("…")
    assert drivers.shown_statement("  \n ") is None
    assert drivers.shown_statement("CREATE USER u IDENTIFIED BY 'p''w'") == "CREATE USER u IDENTIFIED BY '***'"
    straddling = "x" * 280 + " ALTER ROLE r PASSWORD '" + "s" * 60 + "'"
    assert "sss" not in (drivers.shown_statement(straddling) or "")


@pytest.mark.timeout(180)
def test_a_failed_django_migration_names_its_statement_and_its_file(tmp_path: Path, pg_url: str) -> None:
    project = copy_django_example(tmp_path / "django")
    (project / "shop" / "migrations" / "0004_broken.py").write_text(
        "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n"
        '    dependencies = [("shop", "0003_product_name_index")]\n'
        '    operations = [migrations.RunSQL("UPDATE orderz SET id = 1")]\n'
    )
    cli = Cli(project)

    result = cli(
        "upgrade", env={"DJANGO_SETTINGS_MODULE": "mysite.settings", "MIGRATION_DATABASE_URL": pg_url}, timeout=120
    )

    assert result.code == ExitCode.MIGRATION_FAILED, result.stdout + result.stderr
    failed = result.one("revision.failed")
    assert failed["revision"] == "shop.0004_broken"
    assert failed["statement"] == "UPDATE orderz SET id = 1"
    assert failed["file"] == "shop/migrations/0004_broken.py"
    assert "in: UPDATE orderz SET id = 1" in failed["error"]


@given(
    password=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=6),
    padding=st.integers(0, 400),
)
def test_no_password_set_in_sql_survives_shown_statement(password: str, padding: int) -> None:
    """Any password (quotes, backslashes, %, +, spaces, non-ASCII), anywhere around the 300-character cut."""
    quoted = password.replace("'", "''")
    statement = "SELECT 1;" + " " * padding + f"ALTER ROLE app PASSWORD '{quoted}'"
    shown = drivers.shown_statement(statement) or ""
    visible = " ".join(password.split())
    assume(len(visible) >= 6 and visible not in "SELECT 1; ALTER ROLE app PASSWORD '***'…")
    assert visible not in shown


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "mysql"])
def test_a_connection_error_shows_the_url_as_the_user_wrote_it(cli: Cli, scheme: str) -> None:
    """Not the runner's spelling (`+psycopg`, keepalives, session options): the user's URL, password hidden."""
    make_project(cli.cwd, 1)
    written = f"{scheme}://app:s3cr%3At@127.0.0.1:{free_port()}/shop?connect_timeout=5&sslmode=disable"
    if scheme == "mysql":
        written = written.replace("&sslmode=disable", "")
    expected = written.replace("s3cr%3At", "***")

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": written, "MIGRATION_CONNECT_TIMEOUT": "1"})

    assert result.code == ExitCode.DATABASE_UNAVAILABLE
    error = result.one("database.unavailable")["error"]
    assert error.startswith(f"cannot connect to {expected}, "), error
    assert result.one("run.started")["database"] == expected
    for internal in ("+psycopg", "+pymysql", "keepalives", "lock_timeout", "tcp_user_timeout"):
        assert internal not in result.stdout + result.stderr
    assert "s3cr" not in result.stdout + result.stderr
