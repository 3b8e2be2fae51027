"""Real faults on PostgreSQL: a server not up yet, restarts, network resets, blocked DDL, signals, a pooler."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from faults import PgBouncer, ResettingProxy, ThrowawayPostgres, free_port
from support import Cli, Watched, advisory_locks_held, applied_counts, make_project, query, rev_id, version, wait_until


def slow_bodies(revisions: int, seconds: float) -> dict[int, str]:
    """Revision bodies that create their table, then sleep in the database."""
    return {
        n: f'op.create_table("t_{rev_id(n)}", sa.Column("id", sa.Integer))\nop.execute("SELECT pg_sleep({seconds})")'
        for n in range(1, revisions + 1)
    }


def applied_so_far(url: str) -> int:
    try:
        return sum(applied_counts(url).values())
    except psycopg.Error:
        return 0


@pytest.mark.timeout(60)
def test_database_not_up_yet_then_starting_while_the_runner_retries_exits_0(cli: Cli, tmp_path: Path) -> None:
    """The runner starts first; a server started once it is retrying is found by the retries and migrated."""
    server = ThrowawayPostgres()
    make_project(cli.cwd, revisions=3)
    try:
        runner = Watched(cli.start(env={"MIGRATION_DATABASE_URL": server.url, "MIGRATION_CONNECT_TIMEOUT": "30"}))
        runner.wait_for("database.retrying", timeout=30)  # refused, and retrying: now the server comes up
        server.start()
        result = runner.finish(timeout=40)
    finally:
        server.stop()

    assert result.code == 0, result.stdout
    retries = result.named("database.retrying")
    assert retries, "no retry was logged"
    assert [r["attempt"] for r in retries] == list(range(1, len(retries) + 1))
    assert all(r["error_class"] in {"08001", "57P03"} and r["delay_seconds"] >= 0 for r in retries)


@pytest.mark.timeout(30)
def test_server_never_starts_exits_69_within_the_connect_timeout(cli: Cli) -> None:
    """With nothing listening, the runner retries for about MIGRATION_CONNECT_TIMEOUT=5 s, then exits 69."""
    make_project(cli.cwd, revisions=1)

    result = cli(
        env={
            "MIGRATION_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
            "MIGRATION_CONNECT_TIMEOUT": "5",
        }
    )

    assert result.code == 69
    # At least most of the timeout; above, generous (a busy host), and far below the 60 s default.
    assert 3 <= result.one("run.finished")["duration_seconds"] < 30
    assert len(result.named("database.retrying")) >= 3
    assert "MIGRATION_CONNECT_TIMEOUT=5" in result.one("database.unavailable")["error"]


def test_a_missing_database_is_not_retried(cli: Cli, pg_admin_url: str) -> None:
    """SQLSTATE 3D000 (no such database) cannot be fixed by retrying: exit 78 at once, naming the URL setting."""
    make_project(cli.cwd, revisions=1)
    url = pg_admin_url.rsplit("/", 1)[0] + "/no_such_database_here"

    result = cli(env={"MIGRATION_DATABASE_URL": url, "MIGRATION_CONNECT_TIMEOUT": "30"})

    assert result.code == 78
    assert result.named("database.retrying") == []
    assert "3D000" in result.one("config.invalid")["error"]


@pytest.mark.timeout(90)
def test_server_restart_mid_run_reconnects_and_applies_each_revision_once(cli: Cli, tmp_path: Path) -> None:
    """`pg_ctl restart -m fast` in the middle of a 30-revision run: exit 0, each revision applied once."""
    server = ThrowawayPostgres()
    server.start()
    make_project(cli.cwd, revisions=30, bodies=slow_bodies(30, 0.1))
    try:
        started = time.monotonic()
        runner = cli.start(env={"MIGRATION_DATABASE_URL": server.url, "MIGRATION_CONNECT_TIMEOUT": "30"})
        wait_until(lambda: applied_so_far(server.url) >= 5, 30, "5 revisions applied")
        server.restart()
        result = cli.finish(runner, started, timeout=60)
        counts = applied_counts(server.url)
        final = version(server.url)
    finally:
        server.stop()

    assert result.code == 0, result.stdout[-3000:]
    assert result.named("database.reconnecting"), "the restart went unnoticed"
    assert final == [rev_id(30)]
    assert counts == {rev_id(n): 1 for n in range(1, 31)}


@pytest.mark.timeout(90)
def test_network_reset_mid_revision_is_survived(cli: Cli, pg_url: str) -> None:
    """Every TCP connection is reset (RST) while a revision runs: the runner reconnects and completes."""
    port = int(pg_url.split(":")[2].split("/", maxsplit=1)[0])
    proxy = ResettingProxy(port)
    through_proxy = pg_url.replace(f":{port}/", f":{proxy.port}/")
    make_project(cli.cwd, revisions=20, bodies=slow_bodies(20, 0.2))
    try:
        started = time.monotonic()
        runner = cli.start(env={"MIGRATION_DATABASE_URL": through_proxy, "MIGRATION_CONNECT_TIMEOUT": "20"})
        wait_until(lambda: applied_so_far(pg_url) >= 4, 30, "4 revisions applied")
        sleeping = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(0.2)' AND state = 'active'"
        wait_until(lambda: query(pg_url, sleeping)[0][0] >= 1, 30, "a revision inside its pg_sleep")
        reset = proxy.reset_all()
        result = cli.finish(runner, started, timeout=60)
    finally:
        proxy.close()

    assert reset >= 2, "nothing was connected through the proxy"
    assert result.code == 0, result.stdout[-3000:]
    assert result.named("database.reconnecting")
    assert version(pg_url) == [rev_id(20)]
    assert applied_counts(pg_url) == {rev_id(n): 1 for n in range(1, 21)}
    assert advisory_locks_held(pg_url) == 0


def blocked_project(cli: Cli, pg_url: str) -> None:
    """Revision 1 creates t_0001; revision 2 alters it (and needs ACCESS EXCLUSIVE)."""
    make_project(
        cli.cwd,
        revisions=2,
        bodies={
            2: 'op.add_column("t_0001", sa.Column("x", sa.Integer))\n'
            'op.create_table("t_0002", sa.Column("id", sa.Integer))'
        },
    )
    assert cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TARGET": rev_id(1)}).code == 0


@pytest.mark.timeout(60)
def test_revision_blocked_for_3s_by_an_access_exclusive_lock_is_retried(cli: Cli, pg_url: str) -> None:
    """lock_timeout (55P03) rolls the revision back; it is retried with backoff and succeeds once the lock goes."""
    blocked_project(cli, pg_url)
    holder = psycopg.connect(pg_url)
    holder.execute("LOCK TABLE t_0001 IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(3, holder.rollback)
    release.start()
    try:
        result = cli(
            env={
                "MIGRATION_DATABASE_URL": pg_url,
                "MIGRATION_DDL_LOCK_TIMEOUT": "0.5",
                "MIGRATION_REVISION_RETRIES": "30",
            }
        )
    finally:
        release.join()
        holder.close()

    assert result.code == 0, result.stdout
    retries = result.named("revision.retrying")
    assert retries and all(r["sqlstate"] == "55P03" and r["revision"] == rev_id(2) for r in retries)
    assert version(pg_url) == [rev_id(2)]
    assert applied_counts(pg_url) == {rev_id(1): 1, rev_id(2): 1}


@pytest.mark.timeout(60)
def test_revision_blocked_for_good_exits_65_with_55P03_and_changes_nothing(cli: Cli, pg_url: str) -> None:
    """With the lock never released: exit 65 reporting 55P03 after the retries; database unchanged, lock free."""
    blocked_project(cli, pg_url)
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE t_0001 IN ACCESS EXCLUSIVE MODE")
        result = cli(
            env={
                "MIGRATION_DATABASE_URL": pg_url,
                "MIGRATION_DDL_LOCK_TIMEOUT": "0.3",
                "MIGRATION_REVISION_RETRIES": "2",
            }
        )
        assert advisory_locks_held(pg_url) == 0
        holder.rollback()

    assert result.code == 65
    failed = result.one("revision.failed")
    assert failed["sqlstate"] == "55P03" and failed["revision"] == rev_id(2)
    assert "gave up after 3 attempts" in failed["error"]
    assert len(result.named("revision.retrying")) == 2
    assert version(pg_url) == [rev_id(1)]
    assert query(pg_url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 't_0001'") == [(1,)]


def test_syntax_errors_are_never_retried(cli: Cli, pg_url: str) -> None:
    """SQLSTATE class 42 fails at once, however many retries are allowed."""
    make_project(cli.cwd, revisions=1, bodies={1: 'op.execute("SELEC 1")'})

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_REVISION_RETRIES": "5"})

    assert result.code == 65
    assert result.one("revision.failed")["sqlstate"] == "42601"
    assert result.named("revision.retrying") == []


def sleeping_query_running(url: str) -> bool:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE position('pg_sleep(60)' in query) = 8 AND state = 'active'"
    return query(url, sql) == [(1,)]


def assert_sigterm_rolls_back(process: subprocess.Popen[str], pg_url: str) -> None:
    """SIGTERM inside revision 2's pg_sleep(60): 143, at revision 1, the statement cancelled, the lock freed.

    Ending at all before the statement's 60 s proves the cancel; the wait is generous, never a window.
    """
    wait_until(lambda: sleeping_query_running(pg_url), 30, "revision 2 to be running")
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    assert code == 143
    assert version(pg_url) == [rev_id(1)]
    assert applied_counts(pg_url) == {rev_id(1): 1}
    wait_until(lambda: advisory_locks_held(pg_url) == 0 and not sleeping_query_running(pg_url), 20, "cleanup")


@pytest.mark.timeout(60)
def test_sigterm_during_a_long_revision_cancels_rolls_back_and_exits_143(cli: Cli, pg_url: str) -> None:
    """SIGTERM while revision 2 runs pg_sleep(60): 143 long before that ends, at revision 1, the statement cancelled."""
    make_project(cli.cwd, revisions=3, bodies={2: 'op.execute("SELECT pg_sleep(60)")'})
    started = time.monotonic()
    runner = cli.start(env={"MIGRATION_DATABASE_URL": pg_url})

    assert_sigterm_rolls_back(runner, pg_url)
    result = cli.finish(runner, started)
    assert result.one("run.interrupted")["signal"] == "SIGTERM"
    assert result.one("lock.released")


@pytest.mark.timeout(60)
def test_sigterm_works_when_the_runner_is_pid_1(cli: Cli, pg_url: str) -> None:
    """As PID 1 of a PID namespace (as in a container), SIGTERM is handled the same way."""
    make_project(cli.cwd, revisions=3, bodies={2: 'op.execute("SELECT pg_sleep(60)")'})
    wrapper = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            sys.executable,
            "-c",
            "import os, sys; assert os.getpid() == 1; from runner.cli import main; sys.exit(main())",
        ],
        cwd=cli.cwd,
        env=cli.env({"MIGRATION_DATABASE_URL": pg_url}),
        stdout=subprocess.PIPE,
        text=True,
    )
    children = Path(f"/proc/{wrapper.pid}/task/{wrapper.pid}/children")
    wait_until(lambda: children.read_text().strip(), 10, "the namespaced runner to start")
    runner_pid = int(children.read_text().split()[0])

    class AsPid1:  # signal the runner itself (PID 1 inside), report the wrapper's exit status
        def send_signal(self, signum: int) -> None:
            Path(f"/proc/{runner_pid}").exists() and __import__("os").kill(runner_pid, signum)

        def wait(self, timeout: float) -> int:
            return wrapper.wait(timeout)

    assert_sigterm_rolls_back(AsPid1(), pg_url)  # type: ignore[arg-type]
    assert '"run.interrupted"' in (wrapper.stdout.read() if wrapper.stdout else "")


@pytest.mark.timeout(60)
def test_behind_a_transaction_pooler_the_lost_lock_is_detected(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Through PgBouncer in transaction mode the lock leaves the session: exit 78, saying to connect directly."""
    database = pg_url.rsplit("/", 1)[1]
    port = int(pg_url.split(":")[2].split("/", maxsplit=1)[0])
    bouncer = PgBouncer(port, database)
    make_project(cli.cwd, revisions=2)
    try:
        url = f"postgresql://postgres@127.0.0.1:{bouncer.port}/{database}"

        def hold() -> None:
            with psycopg.connect(url) as busy:
                busy.execute("SELECT pg_sleep(0.3)")

        # Four transactions at once make the pool open all its server sessions; round robin
        # (PgBouncer's server_round_robin) then gives each of the runner's transactions the next
        # idle one, so its second transaction never lands on the session that holds the lock.
        warm = [threading.Thread(target=hold) for _ in range(4)]
        for thread in warm:
            thread.start()
        for thread in warm:
            thread.join(10)
        result = cli(env={"MIGRATION_DATABASE_URL": url})
    finally:
        bouncer.stop()

    assert result.code == 78, result.stdout
    lost = result.one("lock.lost")
    assert "directly" in lost["error"] and "PgBouncer" in lost["error"]
    assert result.named("revision.applied") == []


@pytest.mark.timeout(90)
def test_what_an_exit_0_reports_survives_a_crash_right_after(cli: Cli) -> None:
    """Revisions commit asynchronously, but the run ends with a synchronous commit: a crash then loses nothing."""
    server = ThrowawayPostgres()
    make_project(cli.cwd, revisions=40)
    try:
        server.start()
        # wal_writer_delay is 200 ms: a crash this soon after exit would lose asynchronous commits not yet written.
        result = cli(env={"MIGRATION_DATABASE_URL": server.url})
        server.crash()
        after = version(server.url)
    finally:
        server.stop()

    assert result.code == 0, result.stdout
    assert result.one("upgrade.finished")["current"] == [rev_id(40)]
    assert after == [rev_id(40)]
