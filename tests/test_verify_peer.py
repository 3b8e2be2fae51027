"""verify against pytest-alembic on the project shapes its documentation shows, on PostgreSQL and MariaDB.

A project written for pytest-alembic passes ``verify`` wherever pytest-alembic's four built-in
tests pass on it, and fails wherever they fail for a real defect. pytest-alembic's tests run
through its public API (``bench/pytest_alembic_four.py``: its plugin does not collect under
pytest 9), on the same database, then the database is emptied and ``verify`` runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy
from support import REPO, Cli, query, wait_until
from test_verify import MODELS, add_revision, project

from runner import catalog

FOUR = REPO / "bench" / "pytest_alembic_four.py"


def their_four(root: Path, url: str) -> dict[str, str]:
    """pytest-alembic's four built-in tests on ``url``: each test's outcome, ``passed`` or ``failed: ...``."""
    ini = root / "alembic.ini"
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", driver_url(url)))
    done = subprocess.run(
        [sys.executable, str(FOUR)],
        cwd=root,
        env={"MIGRATION_DATABASE_URL": driver_url(url), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.strip(), done.stderr[-2000:]
    outcomes: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return outcomes


def driver_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://").replace("mysql://", "mysql+pymysql://")


def empty(url: str) -> None:
    """Drop everything pytest-alembic left, so that verify meets a scratch database."""
    engine = sqlalchemy.create_engine(driver_url(url))
    try:
        with engine.connect() as connection:
            catalog.drop_everything(connection, catalog.baseline(connection))
    finally:
        engine.dispose()


def data_only(root: Path) -> None:
    """A revision that only fixes rows, with the empty downgrade pytest-alembic's docs show for it."""
    add_revision(root, "0003", "0002", "    op.execute(\"UPDATE items SET name = 'x' WHERE name = ''\")", "    pass")


def no_downgrade(root: Path) -> None:
    """A revision whose downgrade raises NotImplementedError: irreversible by design."""
    add_revision(
        root,
        "0003",
        "0002",
        '    op.add_column("orders", sa.Column("note", sa.Text))',
        '    raise NotImplementedError("notes are kept")',
    )
    models = root / "models.py"
    models.write_text(
        models.read_text().replace(
            '    sa.Column("quantity", sa.Integer, nullable=False),\n)',
            '    sa.Column("quantity", sa.Integer, nullable=False),\n    sa.Column("note", sa.Text),\n)',
        )
    )


def schema_version_table(root: Path) -> None:
    """The version table in its own schema, as env.py configures it (version_table_schema)."""
    env_py = root / "migrations" / "env.py"
    text = env_py.read_text()
    plain = "context.configure(connection=connection, target_metadata=target_metadata)"
    env_py.write_text(text.replace(plain, plain[:-1] + ', version_table_schema="meta")'))


def wrong_downgrade(root: Path) -> None:
    """A real defect: 0002's downgrade drops the wrong table."""
    path = root / "migrations" / "versions" / "0002_r.py"
    path.write_text(path.read_text().replace('op.drop_table("orders")', 'op.drop_table("no_such_table")'))


def unmigrated_model(root: Path) -> None:
    """A real defect: a model column no revision creates."""
    (root / "models.py").write_text(MODELS.format(extra='\n    sa.Column("price", sa.Integer),'))


SHAPES: dict[str, tuple[dict[str, Any], Any, bool]] = {
    # name: (project() arguments, what is done to it, whether it is sound)
    "plain": ({}, None, True),
    "data-only revision": ({}, data_only, True),
    "branches and a merge": ({"merged": True}, None, True),
    "a revision without a downgrade": ({}, no_downgrade, True),
    "schema-qualified version table": ({}, schema_version_table, True),
    "two heads": ({"second_head": True}, None, False),
    "a downgrade that fails": ({}, wrong_downgrade, False),
    "a model no revision creates": ({}, unmigrated_model, False),
}


# A MySQL schema is a database: the schema-qualified version table is PostgreSQL's shape.
CASES = [(shape, server) for server in ("postgresql", "mariadb") for shape in SHAPES]
CASES.remove(("schema-qualified version table", "mariadb"))


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("shape", "server"), CASES)
def test_verify_agrees_with_pytest_alembic(  # noqa: PLR0917  (fixtures and parameters)
    cli: Cli, pg_url: str, mysql_url: str, tmp_path: Path, shape: str, server: str
) -> None:
    """verify passes where pytest-alembic's four built-in tests pass, and fails where they find a real defect."""
    arguments, change, sound = SHAPES[shape]
    url = pg_url if server == "postgresql" else mysql_url
    root = project(tmp_path / "p", **arguments)
    if change is not None:
        change(root)
    if shape == "schema-qualified version table":  # the schema the CI makes before the tests (and empty() keeps)
        engine = sqlalchemy.create_engine(driver_url(url))
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE SCHEMA meta")
        engine.dispose()

    theirs = their_four(root, url)
    empty(url)
    env = {"MIGRATION_DATABASE_URL": url}
    if shape == "schema-qualified version table":  # the runner reads that table too: it is told where (else 78)
        env["MIGRATION_VERSION_TABLE_SCHEMA"] = "meta"
    ours = cli("verify", "--output", "json", env=env, cwd=root, timeout=120)

    assert all(outcome == "passed" for outcome in theirs.values()) == sound, theirs
    assert ours.code == (0 if sound else 1), ours.stdout + ours.stderr


# Waits on an advisory lock the test holds; on the way up, only when applied again (the ledger shows it reverted).
WAITS = {
    "down": '    op.execute("SELECT pg_advisory_lock(4242); SELECT pg_advisory_unlock(4242)")',
    "up": (
        '    again = op.get_bind().execute(sa.text("SELECT count(*) FROM migration_runner_history '
        "WHERE revision = '0003' AND direction = 'down'\")).scalar()\n"
        "    if again:\n"
        '        op.execute("SELECT pg_advisory_lock(4242); SELECT pg_advisory_unlock(4242)")'
    ),
}


@pytest.mark.parametrize("stage", ["down", "up"])
def test_sigterm_in_the_stairway_is_143_with_the_lock_released_and_no_traceback(
    cli: Cli, pg_url: str, tmp_path: Path, stage: str
) -> None:
    """SIGTERM while a stretch of the stairway runs (down, or up again): exit 143, the lock released, no traceback.

    The revision waits on an advisory lock the test holds, so the signal lands inside it, without timing.
    """
    root = project(tmp_path / "p")
    up, down = (WAITS["up"], "    pass") if stage == "up" else ("    pass", WAITS["down"])
    add_revision(root, "0003", "0002", up, down)
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(4242)")
        started = time.monotonic()
        process = cli.start("verify", env={"MIGRATION_DATABASE_URL": pg_url}, cwd=root)
        waiting = "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted"
        wait_until(lambda: query(pg_url, waiting), 60, "verify to wait inside revision 0003")
        process.send_signal(signal.SIGTERM)
        result = cli.finish(process, started, timeout=60)
    finally:
        holder.close()

    assert result.code == 143, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.named("lock.released")
    assert query(pg_url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") == [(0,)]
