"""MariaDB / MySQL: GET_LOCK, concurrent runners, lock timeout, and non-transactional DDL failures."""

from __future__ import annotations

import contextlib
import time

import pytest
from support import Cli, Watched, make_project, mysql_connect, mysql_query, rev_id, wait_until

from runner import locks


def mysql_version(url: str) -> list[str]:
    return sorted(row[0] for row in mysql_query(url, "SELECT version_num FROM alembic_version"))


def mysql_counts(url: str) -> dict[str, int]:
    return dict(mysql_query(url, "SELECT revision, count(*) FROM applied_log GROUP BY revision"))


@pytest.mark.parametrize("scheme", ["mysql", "mariadb", "mysql+pymysql"])
def test_upgrade_on_mariadb_with_each_url_scheme(cli: Cli, mysql_url: str, scheme: str) -> None:
    """mysql://, mariadb:// and mysql+pymysql:// all migrate with PyMySQL and the GET_LOCK lock."""
    make_project(cli.cwd, revisions=3)

    result = cli(env={"MIGRATION_DATABASE_URL": mysql_url.replace("mysql://", f"{scheme}://", 1)})

    assert result.code == 0, result.stdout
    assert result.one("lock.acquired")["lock_name"].startswith("migration-runner.")
    assert mysql_version(mysql_url) == [rev_id(3)]
    assert mysql_counts(mysql_url) == {rev_id(n): 1 for n in range(1, 4)}
    assert cli("check", env={"MIGRATION_DATABASE_URL": mysql_url}).code == 0


@pytest.mark.timeout(120)
def test_ten_runners_at_once_on_mariadb(cli: Cli, mysql_url: str) -> None:
    """Ten runners started together all exit 0 and each revision is applied once."""
    make_project(cli.cwd, revisions=10)
    env = {"MIGRATION_DATABASE_URL": mysql_url, "MIGRATION_LOCK_TIMEOUT": "90"}
    started = time.monotonic()
    runners = [cli.start(env=env) for _ in range(10)]

    results = [cli.finish(runner, started, timeout=110) for runner in runners]

    assert [r.code for r in results] == [0] * 10, [r.stdout[-1500:] for r in results if r.code]
    assert mysql_version(mysql_url) == [rev_id(10)]
    assert mysql_counts(mysql_url) == {rev_id(n): 1 for n in range(1, 11)}
    assert sum(1 for r in results if r.named("revision.applied")) == 1


@pytest.mark.timeout(30)
def test_held_get_lock_makes_the_runner_name_the_holder_and_exit_75(cli: Cli, mysql_url: str) -> None:
    """A session holding the GET_LOCK: the runner logs its connection id and exits 75 after MIGRATION_LOCK_TIMEOUT=2."""
    make_project(cli.cwd, revisions=1)
    database = mysql_url.rsplit("/", 1)[1]
    key = locks.derive_key(database_name=database, schema=None, version_table="alembic_version")
    name = f"migration-runner.{key % (1 << 64):016x}"
    with contextlib.closing(mysql_connect(mysql_url)) as holder, holder.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, 0), CONNECTION_ID()", (name,))
        acquired, holder_id = cursor.fetchone()
        assert acquired == 1

        result = cli(env={"MIGRATION_DATABASE_URL": mysql_url, "MIGRATION_LOCK_TIMEOUT": "2"})

    assert result.code == 75
    assert 2 <= result.one("run.finished")["duration_seconds"] < 30  # the whole wait; generous above (busy hosts)
    assert result.named("lock.waiting")[0]["holder"]["pid"] == holder_id
    assert not mysql_query(mysql_url, "SHOW TABLES LIKE 'alembic_version'")
    after = cli(env={"MIGRATION_DATABASE_URL": mysql_url, "MIGRATION_LOCK_TIMEOUT": "5"})
    assert after.code == 0  # the holder disconnected: the lock went with it


def test_failed_revision_on_mariadb_names_it_and_warns_of_partial_changes(cli: Cli, mysql_url: str) -> None:
    """MySQL DDL commits as it goes: exit 65, the failed revision named, partially_applied true, never retried."""
    make_project(
        cli.cwd,
        revisions=3,
        bodies={
            2: 'op.create_table("t_0002", sa.Column("id", sa.Integer))\nop.execute("ALTER TABLE nowhere ADD x INT")'
        },
    )

    result = cli(env={"MIGRATION_DATABASE_URL": mysql_url, "MIGRATION_REVISION_RETRIES": "3"})

    assert result.code == 65
    failed = result.one("revision.failed")
    assert failed["revision"] == rev_id(2)
    assert failed["partially_applied"] is True
    assert "may be partly applied" in failed["error"]
    assert result.named("revision.retrying") == []
    assert mysql_version(mysql_url) == [rev_id(1)]
    assert mysql_query(mysql_url, "SHOW TABLES LIKE 't_0002'")  # the partial change the warning speaks of


@pytest.mark.timeout(120)
def test_followers_do_not_block_online_ddl(cli: Cli, mysql_url: str) -> None:
    """Followers waiting in GET_LOCK while the winner runs ALGORITHM=INPLACE, LOCK=NONE DDL: all exit 0."""
    gate = "migration-runner-test-gate"
    online = (
        f"op.execute(\"SELECT GET_LOCK('{gate}', 60)\")\n"
        f"op.execute(\"SELECT RELEASE_LOCK('{gate}')\")\n"
        'op.execute("ALTER TABLE t_0001 ADD INDEX ix_t_0001_id (id), ALGORITHM=INPLACE, LOCK=NONE")\n'
    )
    make_project(cli.cwd, revisions=2, bodies={2: online})
    env = {"MIGRATION_DATABASE_URL": mysql_url, "MIGRATION_LOCK_TIMEOUT": "90"}

    def gate_waiters() -> int:
        sql = "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s"
        return int(mysql_query(mysql_url, sql, (f"SELECT GET_LOCK('{gate}'%",))[0][0])

    with contextlib.closing(mysql_connect(mysql_url)) as holder, holder.cursor() as cursor:
        cursor.execute("SELECT GET_LOCK(%s, 0)", (gate,))
        winner = Watched(cli.start(env=env))
        wait_until(lambda: gate_waiters() == 1, 60, "the winner to reach revision 2")
        followers = [Watched(cli.start(env=env)) for _ in range(3)]
        for follower in followers:
            follower.wait_for("lock.waiting", 60)
    results = [winner.finish(90)] + [follower.finish(90) for follower in followers]

    assert [r.code for r in results] == [0, 0, 0, 0], [r.stdout[-1500:] for r in results if r.code]
    assert mysql_version(mysql_url) == [rev_id(2)]
    assert mysql_counts(mysql_url) == {rev_id(1): 1, rev_id(2): 1}
    indexes = mysql_query(mysql_url, "SHOW INDEX FROM t_0001 WHERE Key_name = 'ix_t_0001_id'")
    assert len(indexes) == 1
