"""The advisory lock: waiting, naming the holder, timing out, and concurrent runners."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg
import pytest
from support import (
    Cli,
    Watched,
    advisory_locks_held,
    applied_counts,
    lock_key_for,
    make_project,
    query,
    rev_id,
    version,
    wait_until,
)


@pytest.mark.timeout(30)
def test_held_lock_makes_the_runner_wait_name_the_holder_and_exit_75(cli: Cli, pg_url: str) -> None:
    """With the lock held elsewhere and MIGRATION_LOCK_TIMEOUT=2, the runner logs the holder and exits 75 in ~2 s."""
    make_project(cli.cwd, revisions=2)
    with psycopg.connect(pg_url, autocommit=True, application_name="holder-under-test") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key_for(pg_url),))
        holder_pid = holder.info.backend_pid

        result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOCK_TIMEOUT": "2"})

    assert result.code == 75
    # It waited the whole MIGRATION_LOCK_TIMEOUT and gave up then, not at some later bound (a busy machine
    # stretches the clock, so the upper bound is generous).
    assert 2 <= result.one("run.finished")["duration_seconds"] < 30  # far below the 300 s default
    waiting = result.named("lock.waiting")
    assert waiting, result.stdout
    assert waiting[0]["holder"]["pid"] == holder_pid
    assert waiting[0]["holder"]["application_name"] == "holder-under-test"
    assert waiting[0]["holder"]["client_addr"] == "127.0.0.1"
    assert waiting[0]["holder"]["since"]
    assert "holder-under-test" in result.one("lock.timeout")["error"]
    assert query_version_table_absent(pg_url)


def runner_sessions(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'migration-runner %'"
        ).fetchall()
    return [row[0] for row in rows]


def query_version_table_absent(url: str) -> bool:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)


@pytest.mark.timeout(30)
def test_runner_proceeds_once_the_holder_releases(cli: Cli, pg_url: str) -> None:
    """A runner that waits for the lock migrates as soon as the holder lets go."""
    make_project(cli.cwd, revisions=2)
    holder = psycopg.connect(pg_url, autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (lock_key_for(pg_url),))
    runner = Watched(cli.start(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOCK_TIMEOUT": "20"}))
    runner.wait_for("lock.waiting", 60)  # however long start-up takes on a busy machine
    assert runner.process.poll() is None
    holder.close()

    result = runner.finish(timeout=30)

    assert result.code == 0, result.stdout
    assert result.one("lock.acquired")["wait_seconds"] > 0
    assert version(pg_url) == [rev_id(2)]
    assert advisory_locks_held(pg_url) == 0


@pytest.mark.timeout(90)
def test_ten_runners_at_once_apply_each_revision_exactly_once(cli: Cli, pg_url: str) -> None:
    """Ten runners started together on a fresh database all exit 0 and every revision runs once."""
    make_project(cli.cwd, revisions=10)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOCK_TIMEOUT": "60"}
    started = time.monotonic()
    runners = [cli.start(env=env) for _ in range(10)]

    results = [cli.finish(runner, started, timeout=80) for runner in runners]

    assert [r.code for r in results] == [0] * 10, [r.stdout for r in results if r.code]
    assert version(pg_url) == [rev_id(10)]
    assert applied_counts(pg_url) == {rev_id(n): 1 for n in range(1, 11)}
    migrated = [r for r in results if r.named("revision.applied")]
    assert len(migrated) == 1
    assert len(migrated[0].named("revision.applied")) == 10
    assert advisory_locks_held(pg_url) == 0


@pytest.mark.timeout(60)
def test_two_runners_on_one_sqlite_file(cli: Cli, tmp_path: Path) -> None:
    """Two runners on the same SQLite file both exit 0; the file lock makes each revision run once."""
    make_project(cli.cwd, revisions=5)
    db = tmp_path / "shared.db"
    env = {"MIGRATION_DATABASE_URL": f"sqlite:///{db}"}
    started = time.monotonic()
    runners = [cli.start(env=env) for _ in range(2)]

    results = [cli.finish(runner, started, timeout=50) for runner in runners]

    assert [r.code for r in results] == [0, 0], [r.stdout for r in results]
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT revision, count(*) FROM applied_log GROUP BY revision").fetchall()
        versions = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert dict(rows) == {rev_id(n): 1 for n in range(1, 6)}
    assert versions == [(rev_id(5),)]
    assert sum(len(r.named("revision.applied")) for r in results) == 5


def test_lock_key_override_is_used(cli: Cli, pg_url: str) -> None:
    """MIGRATION_LOCK_KEY replaces the derived key: holding the derived one no longer blocks."""
    make_project(cli.cwd, revisions=1)
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key_for(pg_url),))

        result = cli(
            env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOCK_KEY": "4242", "MIGRATION_LOCK_TIMEOUT": "2"}
        )

    assert result.code == 0
    assert result.one("lock.acquired")["lock_key"] == 4242


# Held by the test; a revision waits for it, so followers can be started while the winner is mid-revision.
_GATE_KEY = 424242


def _gate_waiters(url: str) -> int:
    return int(
        query(
            url,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid = %s",
            (_GATE_KEY,),
        )[0][0]
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "statement",
    [
        "CREATE INDEX CONCURRENTLY ix_t_0001_id ON t_0001 (id)",
        "REINDEX INDEX CONCURRENTLY ix_t_0001_first",
        "ALTER TABLE parted DETACH PARTITION parted_1 CONCURRENTLY",
    ],
    ids=["create-index", "reindex", "detach-partition"],
)
def test_followers_hold_no_snapshot_that_a_concurrent_statement_waits_for(
    cli: Cli, pg_url: str, statement: str
) -> None:
    """Followers waiting for the lock while the winner runs a CONCURRENTLY statement: all exit 0.

    A follower that waited inside a blocking pg_advisory_lock held a snapshot;
    CREATE INDEX CONCURRENTLY (and REINDEX / DETACH PARTITION CONCURRENTLY)
    waits for every older snapshot, so it hit lock_timeout (55P03) and every
    run exited 65.
    """
    setup = (
        'op.execute("CREATE INDEX ix_t_0001_first ON t_0001 (id)")\n'
        'op.execute("CREATE TABLE parted (id int) PARTITION BY RANGE (id)")\n'
        'op.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)")\n'
    )
    # The gate waits as long as the followers take to start (a busy host: many seconds), so it is exempt from
    # the runner's lock_timeout; the statement under test is not (RESET: the session's value, the runner's).
    concurrent = (
        "with op.get_context().autocommit_block():\n"
        '    op.execute("SET lock_timeout = 0")\n'
        f'    op.execute("SELECT pg_advisory_lock({_GATE_KEY})")\n'
        f'    op.execute("SELECT pg_advisory_unlock({_GATE_KEY})")\n'
        '    op.execute("RESET lock_timeout")\n'
        f'    op.execute("{statement}")\n'
    )
    make_project(
        cli.cwd,
        revisions=2,
        bodies={1: 'op.create_table("t_0001", sa.Column("id", sa.Integer))\n' + setup, 2: concurrent},
    )
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_LOCK_TIMEOUT": "90"}
    with psycopg.connect(pg_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (_GATE_KEY,))
        winner = Watched(cli.start(env=env))
        wait_until(lambda: _gate_waiters(pg_url) == 1, 60, "the winner to reach revision 2")
        followers = [Watched(cli.start(env=env)) for _ in range(3)]
        for follower in followers:
            follower.wait_for("lock.waiting", 60)
    results = [winner.finish(90)] + [follower.finish(90) for follower in followers]

    assert [r.code for r in results] == [0, 0, 0, 0], [r.stdout for r in results if r.code]
    assert version(pg_url) == [rev_id(2)]
    assert applied_counts(pg_url) == {rev_id(1): 1, rev_id(2): 1}
    assert query(pg_url, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]
    assert advisory_locks_held(pg_url) == 0
