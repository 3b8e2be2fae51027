"""Broken revision files, and SQLite: a crashed runner's lock, and revisions that roll back whole."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import pytest
from support import Cli, Watched, make_project, rev_id

# Nothing listens on port 9: broken files must be found before any connection.
UNREACHABLE = "postgresql://postgres@127.0.0.1:9/nowhere"


def break_import(project: Path) -> Path:
    path = project / "migrations" / "versions" / f"{rev_id(2)}_r.py"
    path.write_text(path.read_text().replace("import os\n", "import os\nfrom no_such_module import helper\n"))
    return path


def break_syntax(project: Path) -> Path:
    path = project / "migrations" / "versions" / f"{rev_id(2)}_r.py"
    path.write_text(path.read_text().replace("def upgrade():", "def upgrade(:"))
    return path


@pytest.mark.parametrize(
    ("breaking", "expected"),
    [
        pytest.param(break_import, "ModuleNotFoundError: No module named 'no_such_module'", id="import-error"),
        pytest.param(break_syntax, "SyntaxError", id="syntax-error"),
    ],
)
def test_a_revision_that_does_not_import_is_named(cli: Cli, breaking: object, expected: str) -> None:
    """A revision file raising on import: exit 78, its path and the error in one line, no traceback."""
    make_project(cli.cwd, revisions=3)
    path = breaking(cli.cwd)  # type: ignore[operator]

    result = cli(env={"MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78
    error = result.one("revisions.broken")["error"]
    assert str(path) in error and expected in error
    assert "Traceback" not in result.stdout + result.stderr


def test_a_down_revision_pointing_nowhere_is_named(cli: Cli) -> None:
    """down_revision naming a missing revision: exit 78 naming the missing id and the file that names it."""
    make_project(cli.cwd, revisions=3, down_revisions={2: "cafebabe"})

    result = cli(env={"MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78
    error = result.one("revisions.broken")["error"]
    assert "'cafebabe' does not exist" in error
    assert f"{rev_id(2)}_r.py" in error
    assert "Traceback" not in result.stdout + result.stderr


def test_a_cycle_is_named(cli: Cli) -> None:
    """Revisions that form a cycle: exit 78 naming the revisions and their files."""
    make_project(cli.cwd, revisions=3, down_revisions={1: rev_id(3)})

    result = cli(env={"MIGRATION_DATABASE_URL": UNREACHABLE})

    assert result.code == 78
    error = result.one("revisions.broken")["error"]
    assert "Cycle" in error
    assert all(f"{rev_id(n)}_r.py" in error for n in (1, 2, 3))


def test_debug_level_adds_the_traceback(cli: Cli) -> None:
    """At MIGRATION_LOG_LEVEL=debug the same error carries its traceback."""
    make_project(cli.cwd, revisions=2)
    break_import(cli.cwd)

    result = cli(env={"MIGRATION_DATABASE_URL": UNREACHABLE, "MIGRATION_LOG_LEVEL": "debug"})

    assert result.code == 78
    assert result.one("revisions.broken").get("exception")


@pytest.mark.timeout(60)
def test_sqlite_file_lock_of_a_killed_runner_does_not_block_the_next(cli: Cli, tmp_path: Path) -> None:
    """SIGKILL a runner inside a slow SQLite revision: the next run takes the lock at once and completes."""
    db = tmp_path / "app.db"
    env = {"MIGRATION_DATABASE_URL": f"sqlite:///{db}"}
    make_project(cli.cwd, revisions=3, bodies={2: "import time\ntime.sleep(60)"})
    runner = Watched(cli.start(env=env))
    runner.wait_for("revision.applied", timeout=60)  # revision 1 is in; revision 2 sleeps, holding the lock
    runner.process.send_signal(signal.SIGKILL)
    runner.process.wait(10)

    make_project(cli.cwd, revisions=3)
    result = cli(env=env)

    assert result.code == 0, result.stdout
    assert result.named("lock.waiting") == []  # the killed runner's file lock is no lock: taken at the first try
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(rev_id(3),)]
        counts = dict(connection.execute("SELECT revision, count(*) FROM applied_log GROUP BY revision"))
    assert counts == {rev_id(n): 1 for n in range(1, 4)}


def test_sqlite_revision_that_fails_rolls_back_its_ddl(cli: Cli, tmp_path: Path) -> None:
    """A SQLite revision that creates a table, then fails, leaves no table behind (transactional DDL)."""
    db = tmp_path / "app.db"
    make_project(
        cli.cwd,
        revisions=2,
        bodies={2: 'op.create_table("t_0002", sa.Column("id", sa.Integer))\nraise ValueError("late failure")'},
    )

    result = cli(env={"MIGRATION_DATABASE_URL": f"sqlite:///{db}"})

    assert result.code == 65
    assert result.one("revision.failed")["partially_applied"] is False
    with sqlite3.connect(db) as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(rev_id(1),)]
    assert "t_0001" in names and "t_0002" not in names
