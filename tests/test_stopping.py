"""Stopped mid-revision: nothing left running, nothing unbounded, nothing the next run cannot explain.

MariaDB commits DDL as it goes, so these tests interrupt a revision that runs a long statement
*after* its first DDL: the case where the database is left half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from faults import ThrowawayPostgres
from support import Cli, advisory_locks_held, applied_counts, make_project, mysql_query, query, rev_id, wait_until

# The long statement runs only while the variable SLOW is set: a re-run after recovery is quick.
LONG_MYSQL_REVISION = (
    'op.create_table("t_0002", sa.Column("id", sa.Integer))\n'
    'if os.environ.get("SLOW"):\n'
    '    op.execute("SELECT SLEEP(60)")'
)


def mysql_sleeping(url: str) -> list[int]:
    """Connection ids running the revision's SLEEP(60) in this test's database."""
    database = url.rsplit("/", 1)[1]
    rows = mysql_query(
        url,
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND INFO LIKE 'SELECT SLEEP(60)%%'",
        (database,),
    )
    return [row[0] for row in rows]


def mysql_version(url: str) -> list[str]:
    return sorted(row[0] for row in mysql_query(url, "SELECT version_num FROM alembic_version"))


def mysql_ledger(url: str) -> list[tuple[str, str, str | None]]:
    return [
        (row[0], row[1], row[2])
        for row in mysql_query(url, "SELECT revision, outcome, resolution FROM migration_runner_history ORDER BY id")
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("how", "code"), [("SIGTERM", 143), ("MIGRATION_TIMEOUT", 75)])
def test_mariadb_stopped_inside_a_revision_cancels_the_statement_and_blocks_the_next_run(
    cli: Cli, mysql_url: str, how: str, code: int
) -> None:
    """The statement is KILLed before the lock is released; the ledger says interrupted; resolve lets it go on."""
    make_project(cli.cwd, revisions=3, bodies={2: LONG_MYSQL_REVISION})
    env = {"MIGRATION_DATABASE_URL": mysql_url}
    started = time.monotonic()
    slow = {**env, "SLOW": "1"}
    runner = cli.start(env={**slow, "MIGRATION_TIMEOUT": "8"} if how == "MIGRATION_TIMEOUT" else slow)
    wait_until(lambda: mysql_sleeping(mysql_url), 30, "revision 2's SLEEP(60) to run")
    if how == "SIGTERM":
        runner.send_signal(signal.SIGTERM)
    result = cli.finish(runner, started, timeout=30)

    assert result.code == code, result.stdout[-3000:]
    assert mysql_sleeping(mysql_url) == [], "the statement outlived the runner"
    assert result.one("statement.cancelled")
    assert mysql_ledger(mysql_url)[-1] == (rev_id(2), "interrupted", None)
    assert mysql_version(mysql_url) == [rev_id(1)]

    blocked = cli(env=env)
    assert blocked.code == 65
    interrupted = blocked.one("revision.interrupted")
    assert interrupted["revision"] == rev_id(2)
    assert "migration-runner resolve" in interrupted["error"]
    assert "may be partly applied" in interrupted["error"]

    # The operator finds t_0002, drops it, and says the revision is not applied.
    mysql_query(mysql_url, "DROP TABLE t_0002")
    assert cli("resolve", "--mark", "not-applied", env=env).code == 0
    final = cli(env=env)
    assert final.code == 0, final.stdout[-2000:]
    assert mysql_version(mysql_url) == [rev_id(3)]


@pytest.mark.timeout(90)
def test_mariadb_sigkill_inside_a_revision_is_named_as_interrupted_until_resolved(cli: Cli, mysql_url: str) -> None:
    """SIGKILL leaves a `started` row: the next run exits 65 naming it; `resolve --mark applied` stamps it."""
    make_project(cli.cwd, revisions=3, bodies={2: LONG_MYSQL_REVISION})
    env = {"MIGRATION_DATABASE_URL": mysql_url}
    runner = cli.start(env={**env, "SLOW": "1"})
    wait_until(lambda: mysql_sleeping(mysql_url), 30, "revision 2's SLEEP(60) to run")
    runner.kill()
    runner.communicate(timeout=10)
    for orphan in mysql_sleeping(mysql_url):  # the server would run it to the end
        mysql_query(mysql_url, f"KILL {int(orphan)}")

    blocked = cli(env=env)
    assert blocked.code == 65
    assert blocked.one("revision.interrupted")["revision"] == rev_id(2)
    assert mysql_query(mysql_url, "SHOW TABLES LIKE 't_0002'")  # partly applied, as the message says
    assert mysql_ledger(mysql_url)[-1] == (rev_id(2), "started", None)

    # The operator completes it by hand and records it as applied.
    mysql_query(mysql_url, "INSERT INTO applied_log (revision, pid) VALUES ('0002', 0)")
    resolved = cli("resolve", "--mark", "applied", env=env)
    assert resolved.code == 0, resolved.stdout
    assert mysql_version(mysql_url) == [rev_id(2)]
    final = cli(env=env)
    assert final.code == 0
    assert mysql_version(mysql_url) == [rev_id(3)]
    assert [r[:3] for r in mysql_ledger(mysql_url)] == [
        (rev_id(1), "applied", None),
        (rev_id(2), "started", "applied"),
        (rev_id(3), "applied", None),
    ]


def cluster_pids(server: ThrowawayPostgres) -> list[int]:
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = [int(stat.parent.name) for stat in Path("/proc").glob("[0-9]*/stat") if _ppid(stat) == postmaster]
    return [postmaster, *children]


def _ppid(stat: Path) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    return None


@pytest.mark.timeout(120)
def test_a_frozen_server_ends_with_75_within_the_deadline_and_the_grace_period(cli: Cli) -> None:
    """Every PostgreSQL process SIGSTOPped mid-revision: MIGRATION_TIMEOUT=6 + MIGRATION_GRACE_PERIOD=3, then 75."""
    server = ThrowawayPostgres()
    server.start()
    make_project(cli.cwd, revisions=3, bodies={2: 'op.execute("SELECT pg_sleep(60)")'})
    frozen: list[int] = []
    try:
        started = time.monotonic()
        runner = cli.start(
            env={"MIGRATION_DATABASE_URL": server.url, "MIGRATION_TIMEOUT": "6", "MIGRATION_GRACE_PERIOD": "3"}
        )
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE starts_with(query, 'SELECT pg_sleep(60)') AND state = 'active'"
        )
        wait_until(lambda: query(server.url, sql) == [(1,)], 30, "revision 2 to run")
        frozen = cluster_pids(server)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        result = cli.finish(runner, started, timeout=40)  # a frozen server without the deadline: forever
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.stop()

    assert result.code == 75, result.stdout[-2000:] + result.stderr[-2000:]
    assert '"run.abandoned"' in result.stderr


@pytest.mark.timeout(120)
def test_a_revision_that_swallows_sigterm_is_ended_by_the_grace_period(cli: Cli, pg_url: str) -> None:
    """A bare `except:` around the interrupted statement, then more work: exit 143 after MIGRATION_GRACE_PERIOD."""
    body = 'import time\ntry:\n    op.execute("SELECT pg_sleep(60)")\nexcept BaseException:\n    pass\ntime.sleep(60)'
    make_project(cli.cwd, revisions=2, bodies={2: body})
    started = time.monotonic()
    runner = cli.start(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_GRACE_PERIOD": "2"})
    sql = "SELECT count(*) FROM pg_stat_activity WHERE starts_with(query, 'SELECT pg_sleep(60)') AND state = 'active'"
    wait_until(lambda: query(pg_url, sql) == [(1,)], 30, "revision 2 to run")
    runner.send_signal(signal.SIGTERM)
    result = cli.finish(runner, started, timeout=40)  # without the grace period: the revision's 60 s sleep

    assert result.code == 143
    wait_until(lambda: advisory_locks_held(pg_url) == 0, 5, "the server to free the lock of the dead session")
    assert applied_counts(pg_url) == {rev_id(1): 1}


@pytest.mark.timeout(60)
def test_a_revision_that_commits_then_fails_is_partially_applied_and_never_retried(cli: Cli, pg_url: str) -> None:
    """COMMIT inside the revision, then 55P03: partially_applied true, no retry, and the next run is refused."""
    make_project(
        cli.cwd,
        revisions=2,
        bodies={
            2: 'op.create_table("t_0002", sa.Column("id", sa.Integer))\n'
            'op.execute("COMMIT")\n'
            'op.add_column("t_0001", sa.Column("x", sa.Integer))'
        },
    )
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_DDL_LOCK_TIMEOUT": "0.3", "MIGRATION_REVISION_RETRIES": "3"}
    assert cli(env={**env, "MIGRATION_TARGET": rev_id(1)}).code == 0
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE t_0001 IN ACCESS EXCLUSIVE MODE")
        result = cli(env=env)
        holder.rollback()

    assert result.code == 65, result.stdout
    failed = result.one("revision.failed")
    assert failed["sqlstate"] == "55P03" and failed["revision"] == rev_id(2)
    assert failed["partially_applied"] is True
    assert result.named("revision.retrying") == []
    assert query(pg_url, "SELECT to_regclass('t_0002') IS NOT NULL") == [(True,)]  # committed by the revision
    again = cli(env=env)
    assert again.code == 65
    assert again.one("revision.interrupted")["revision"] == rev_id(2)
    assert "MySQL" not in again.one("revision.interrupted")["error"]  # PostgreSQL: the COMMIT is why


@pytest.mark.timeout(60)
def test_sigterm_while_the_final_push_waits_keeps_the_exit_code_and_writes_the_termination_message(
    cli: Cli, pg_url: str, tmp_path: Path
) -> None:
    """A Pushgateway that accepts and never answers; SIGTERM during the push: exit 0, message written, no traceback."""
    make_project(cli.cwd, revisions=1)
    termination = tmp_path / "termination-log"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        silent.settimeout(30)
        started = time.monotonic()
        runner = cli.start(
            env={
                "MIGRATION_DATABASE_URL": pg_url,
                "MIGRATION_PUSHGATEWAY_URL": f"http://127.0.0.1:{silent.getsockname()[1]}",
                "MIGRATION_TERMINATION_LOG": str(termination),
            }
        )
        connection, _ = silent.accept()  # the push has started
        with connection:
            runner.send_signal(signal.SIGTERM)
            result = cli.finish(runner, started, timeout=20)

    assert result.code == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert '"outcome":"success"' in termination.read_text()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("delay", [0.15, 0.3])
def test_a_signal_during_start_up_gives_its_code_and_no_traceback(
    cli: Cli, signum: int, code: int, delay: float
) -> None:
    """While the runner imports its libraries and loads its settings, a signal ends it with 130/143 and one line."""
    make_project(cli.cwd, revisions=1)
    process = subprocess.Popen(
        [sys.executable, "-m", "runner"],
        cwd=cli.cwd,
        env=cli.env({"MIGRATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/nowhere"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=20)

    assert process.returncode == code, stdout + stderr
    assert "Traceback" not in stdout + stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_the_runner_imports_its_modules_is_a_clean_stop(cli: Cli, signum: int, code: int) -> None:
    """Sent while runner.cli is still being imported (the window a busy node stretches): 130/143, one line."""
    make_project(cli.cwd, revisions=1)
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "runner"],  # one stderr line as each import finishes
        cwd=cli.cwd,
        env=cli.env({"MIGRATION_DATABASE_URL": "postgresql://postgres@127.0.0.1:9/nowhere"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    for line in process.stderr:
        if line.rstrip().endswith("|   argparse"):  # runner.cli's first import of its own; more follow
            process.send_signal(signum)
            break
    stdout, stderr = process.communicate(timeout=20)

    assert process.returncode == code, stdout + stderr
    assert "Traceback" not in stdout + stderr
    (event,) = [json.loads(line) for line in stderr.splitlines() if '"run.interrupted"' in line]
    assert event["signal"] == signal.Signals(signum).name


@pytest.mark.timeout(30)
def test_an_interrupted_wait_does_not_claim_a_rollback(cli: Cli, pg_url: str) -> None:
    """`wait` runs no revision: its interruption says so, without "rolled back"."""
    make_project(cli.cwd, revisions=1)
    started = time.monotonic()
    runner = cli.start("wait", env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_WAIT_TIMEOUT": "60"})
    # Its polls are too brief to catch in pg_stat_activity; the database never reaches the target,
    # so after start-up it is polling whenever the signal comes.
    time.sleep(2)
    runner.send_signal(signal.SIGTERM)
    result = cli.finish(runner, started, timeout=20)

    assert result.code == 143
    interrupted = result.one("run.interrupted")
    assert interrupted["error"] == "interrupted by SIGTERM"
    assert "rolled back" not in result.stdout


_GATE_KEY = 515151


@pytest.mark.timeout(90)
def test_postgres_sigkill_inside_an_autocommit_block_is_named_until_resolved(cli: Cli, pg_url: str) -> None:
    """SIGKILL half-way through an autocommit_block: the next run exits 65 naming the revision, not 'already exists'.

    The block committed its first ALTER; the runner had written no ledger row
    for it, so the next run re-ran the revision and failed on that column.
    """
    body = (
        "with op.get_context().autocommit_block():\n"
        '    op.add_column("t_0001", sa.Column("a", sa.Integer))\n'
        f'    op.execute("SELECT pg_advisory_lock({_GATE_KEY})")\n'
        '    op.add_column("t_0001", sa.Column("b", sa.Integer))\n'
    )
    make_project(cli.cwd, revisions=2, bodies={2: body})
    env = {"MIGRATION_DATABASE_URL": pg_url}
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = %s"
    with psycopg.connect(pg_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (_GATE_KEY,))
        runner = cli.start(env=env)
        wait_until(lambda: query(pg_url, waiting, (_GATE_KEY,)) == [(1,)], 60, "revision 2 to wait half-way")
        runner.kill()
        runner.communicate(timeout=10)

    blocked = cli(env=env)

    assert blocked.code == 65, blocked.stdout
    interrupted = blocked.one("revision.interrupted")
    assert interrupted["revision"] == rev_id(2)
    assert "migration-runner resolve" in interrupted["error"]
    assert "MySQL" not in interrupted["error"]
    assert "already exists" not in blocked.stdout
    rows = query(pg_url, "SELECT revision, outcome, transactional FROM migration_runner_history ORDER BY id")
    assert rows == [(rev_id(1), "applied", True), (rev_id(2), "started", False)]

    # The operator finishes the block by hand and records it as applied.
    query(pg_url, "ALTER TABLE t_0001 ADD COLUMN b integer")
    query(pg_url, "INSERT INTO applied_log (revision, pid) VALUES ('0002', 0)")
    assert cli("resolve", "--mark", "applied", env=env).code == 0
    assert cli(env=env).code == 0
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [(rev_id(2),)]
