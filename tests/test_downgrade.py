"""`downgrade`: explicit, guarded, under the same lock and contract as `upgrade`.

Revision k of the generated project creates table t_<k>; its downgrade drops it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import psycopg
import pytest
from support import (
    REPO,
    Cli,
    advisory_locks_held,
    copy_django_example,
    lock_key_for,
    make_project,
    mysql_query,
    query,
    version,
)

SCHEMA = json.loads((REPO / "docs" / "result.schema.json").read_text())
HISTORY_SCHEMA = json.loads((REPO / "docs" / "history.schema.json").read_text())


def tables(url: str) -> list[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '^t_[0-9]+$'")
    return sorted(row[0] for row in rows)


def migrated(cli: Cli, url: str, revisions: int = 5) -> dict[str, str]:
    make_project(cli.cwd, revisions=revisions)
    env = {"MIGRATION_DATABASE_URL": url}
    assert cli("upgrade", env=env).code == 0
    return env


def test_downgrade_to_a_revision_then_one_step(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """downgrade to a revision, then -1: each step reverted in order, the document and metrics say so."""
    env = migrated(cli, pg_url)
    textfile = tmp_path / "metrics.prom"

    to_three = cli(
        "downgrade", "--target", "0003", "--output", "json", env={**env, "MIGRATION_METRICS_TEXTFILE": str(textfile)}
    )
    one_more = cli("downgrade", "-1", env=env)

    assert to_three.code == 0, to_three.stderr
    assert [e["revision"] for e in to_three.named("revision.reverted")] == ["0005", "0004"]
    document = json.loads(to_three.stdout)
    jsonschema.validate(document, SCHEMA)
    assert document["direction"] == "down"
    assert [step["revision"] for step in document["applied"]] == ["0005", "0004"]
    assert document["from"] == ["0005"]
    assert document["to"] == ["0003"]
    assert document["target"] == ["0003"]
    assert 'migration_runner_revisions_applied_total{direction="down"} 2.0' in textfile.read_text()
    assert one_more.code == 0, one_more.stderr
    assert version(pg_url) == ["0002"]
    assert tables(pg_url) == ["t_0001", "t_0002"]
    assert advisory_locks_held(pg_url) == 0
    rows = query(
        pg_url,
        "SELECT revision, direction, outcome FROM migration_runner_history WHERE direction = 'down' ORDER BY id",
    )
    assert rows == [("0005", "down", "reverted"), ("0004", "down", "reverted"), ("0003", "down", "reverted")]


def test_downgrade_to_base(cli: Cli, pg_url: str) -> None:
    """downgrade base reverts every revision: no version row and no table left."""
    env = migrated(cli, pg_url, revisions=3)

    result = cli("downgrade", "base", env=env)

    assert result.code == 0, result.stderr
    assert version(pg_url) == []
    assert tables(pg_url) == []


def test_a_downgrade_needs_a_target(cli: Cli, pg_url: str) -> None:
    """downgrade without a target is 78 and reverts nothing."""
    env = migrated(cli, pg_url, revisions=2)

    result = cli("downgrade", env=env)

    assert result.code == 78
    assert "downgrade needs a target" in result.one("config.invalid")["error"]
    assert version(pg_url) == ["0002"]


@pytest.mark.parametrize("target", ["heads", "0004"])
def test_a_target_that_is_not_below_the_database_is_refused(cli: Cli, pg_url: str, target: str) -> None:
    """A downgrade target that is not below the database is 78 and changes nothing."""
    env = migrated(cli, pg_url, revisions=5)
    assert cli("downgrade", "0003", env=env).code == 0

    result = cli("downgrade", target, env=env)

    assert result.code == 78, result.stderr
    assert version(pg_url) == ["0003"]


def test_refused_in_production_unless_allowed(cli: Cli, pg_url: str) -> None:
    """downgrade in production is 78 unless MIGRATION_ALLOW_DOWNGRADE=true."""
    env = migrated(cli, pg_url, revisions=3)
    production = {**env, "MIGRATION_ENVIRONMENT": "production"}

    refused = cli("downgrade", "-1", env=production)
    allowed = cli("downgrade", "-1", env={**production, "MIGRATION_ALLOW_DOWNGRADE": "true"})

    assert refused.code == 78
    assert "MIGRATION_ALLOW_DOWNGRADE=true" in refused.one("config.invalid")["error"]
    assert allowed.code == 0, allowed.stderr
    assert version(pg_url) == ["0002"]


def test_an_irreversible_step_stops_it_before_any_change(cli: Cli, pg_url: str) -> None:
    """A downgrade across steps that cannot be reverted is 78 naming each, before anything is reverted."""
    env = migrated(cli, pg_url, revisions=5)
    four = cli.cwd / "migrations" / "versions" / "0004_r.py"
    four.write_text(four.read_text().replace('    op.drop_table("t_0004")', '    raise NotImplementedError("one way")'))
    two = cli.cwd / "migrations" / "versions" / "0002_r.py"
    two.write_text(two.read_text().replace('    op.drop_table("t_0002")', "    pass"))

    result = cli("downgrade", "base", env=env)

    assert result.code == 78, result.stderr
    error = result.one("config.invalid")["error"]
    assert "0004" in error
    assert "0002" in error
    assert "nothing was reverted" in error
    assert version(pg_url) == ["0005"]
    assert tables(pg_url) == [f"t_000{k}" for k in range(1, 6)]
    assert cli("downgrade", "0004", env=env).code == 0  # above the irreversible one it goes


def test_a_merge_revision_as_alembic_merge_writes_it_is_reversible(cli: Cli, pg_url: str) -> None:
    """`alembic merge heads` writes `pass` in upgrade() and downgrade(): that reverts exactly, it is not refused."""
    make_project(cli.cwd, revisions=3, down_revisions={3: "0001"})  # heads 0002 and 0003
    merge = subprocess.run(
        [sys.executable, "-m", "alembic", "merge", "-m", "join", "--rev-id", "0004", "heads"],
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert merge.returncode == 0, merge.stderr
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli("upgrade", env=env).code == 0

    result = cli("downgrade", "base", env=env)

    assert result.code == 0, result.stderr
    assert sorted(e["revision"] for e in result.named("revision.reverted")) == ["0001", "0002", "0003", "0004"]
    assert version(pg_url) == []
    assert tables(pg_url) == []


def test_five_concurrent_downgrades_are_serialized_by_the_lock(cli: Cli, pg_url: str) -> None:
    """Five downgrades at once: the lock serialises them, and each revision is reverted once."""
    env = migrated(cli, pg_url, revisions=6)

    started = time.monotonic()
    processes = [cli.start("downgrade", "0002", env=env) for _ in range(5)]
    results = [cli.finish(process, started, timeout=90) for process in processes]

    assert [r.code for r in results] == [0] * 5, [r.stderr for r in results]
    reverted = [e["revision"] for r in results for e in r.named("revision.reverted")]
    assert sorted(reverted) == ["0003", "0004", "0005", "0006"]  # each once, by whichever runner won
    assert version(pg_url) == ["0002"]


def test_sigterm_mid_way_leaves_the_last_fully_reverted_revision(cli: Cli, pg_url: str) -> None:
    """SIGTERM inside a revision's downgrade: 143, and the database at the last fully reverted revision."""
    env = migrated(cli, pg_url, revisions=5)
    three = cli.cwd / "migrations" / "versions" / "0003_r.py"
    three.write_text(three.read_text().replace('    op.drop_table("t_0003")', '    op.execute("SELECT pg_sleep(30)")'))

    started = time.monotonic()
    process = cli.start("downgrade", "base", env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reverting_three = query(pg_url, "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'")
        if reverting_three[0][0] == 1:  # the runner is in revision 0003's downgrade
            break
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    result = cli.finish(process, started, timeout=60)

    assert result.code == 143, result.stderr
    assert version(pg_url) == ["0003"]
    assert tables(pg_url) == ["t_0001", "t_0002", "t_0003"]
    assert advisory_locks_held(pg_url) == 0


def test_django_downgrade_to_a_migration_and_to_zero(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Django downgrades to app:migration and to app:zero, each unapplying in order."""
    project = copy_django_example(tmp_path / "django")
    env = {"MIGRATION_DATABASE_URL": pg_url, "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    assert cli("upgrade", env=env, cwd=project).code == 0

    to_one = cli("downgrade", "shop:0001", env=env, cwd=project)
    to_zero = cli("downgrade", "shop:zero", env=env, cwd=project)

    assert to_one.code == 0, to_one.stderr
    assert [e["revision"] for e in to_one.named("revision.reverted")] == [
        "shop.0003_product_name_index",
        "shop.0002_product_slug",
    ]
    assert to_zero.code == 0, to_zero.stderr
    assert [e["revision"] for e in to_zero.named("revision.reverted")] == ["shop.0001_initial"]
    shop = query(pg_url, "SELECT name FROM django_migrations WHERE app = 'shop'")
    assert shop == []
    assert query(pg_url, "SELECT to_regclass('shop_product')") == [(None,)]


def test_an_interrupted_downgrade_on_mariadb_blocks_until_resolved(cli: Cli, mysql_url: str) -> None:
    """MySQL commits DDL as it goes: a downgrade step that died half-way is named, and resolve moves past it."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": mysql_url}
    assert cli("upgrade", env=env).code == 0
    # What a runner killed inside revision 3's downgrade leaves: its started row, the version table at 0003.
    mysql_query(
        mysql_url,
        "INSERT INTO migration_runner_history (tool, revision, direction, outcome, transactional, started_at, run_id, "
        "host) VALUES ('alembic', '0003', 'down', 'started', 0, UTC_TIMESTAMP(6), 'killed', 'pod-a')",
    )

    def versions() -> list[str]:
        return sorted(row[0] for row in mysql_query(mysql_url, "SELECT version_num FROM alembic_version"))

    blocked = cli("downgrade", "0001", env=env)
    assert blocked.code == 65, blocked.stderr
    assert "the downgrade of revision 0003 was interrupted" in blocked.one("revision.interrupted")["error"]
    assert versions() == ["0003"]  # nothing was run
    # upgrade sees it too: the version table says "at head", the ledger says the schema may be half-reverted.
    upgrading = cli("upgrade", env=env)
    assert upgrading.code == 65, upgrading.stderr
    assert upgrading.one("revision.interrupted")["revision"] == "0003"

    resolved = cli("resolve", "--mark", "applied", env=env)  # the operator found it fully reverted
    assert resolved.code == 0, resolved.stderr
    assert versions() == ["0002"]

    after = cli("downgrade", "0001", env=env)
    assert after.code == 0, after.stderr
    assert [e["revision"] for e in after.named("revision.reverted")] == ["0002"]
    assert versions() == ["0001"]


def test_check_wait_and_current_refuse_a_half_reverted_schema_on_mariadb(cli: Cli, mysql_url: str) -> None:
    """A downgrade step killed after its DROP TABLE: check, wait and current exit 65 as upgrade does, never 0.

    Application pods gated on `wait` would otherwise start on a half-reverted schema.
    """
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": mysql_url, "MIGRATION_WAIT_TIMEOUT": "30"}
    assert cli("upgrade", env=env).code == 0
    # What a runner killed inside revision 3's downgrade leaves: t_0003 dropped, a started row, the version at 0003.
    mysql_query(mysql_url, "DROP TABLE t_0003")
    mysql_query(
        mysql_url,
        "INSERT INTO migration_runner_history (tool, revision, direction, outcome, transactional, started_at, run_id, "
        "host) VALUES ('alembic', '0003', 'down', 'started', 0, UTC_TIMESTAMP(6), 'killed', 'pod-a')",
    )

    for command in ("check", "wait", "current"):
        result = cli(command, env=env)
        assert result.code == 65, (command, result.stdout, result.stderr)
        interrupted = result.one("revision.interrupted")
        assert interrupted["revision"] == "0003"
        assert "the downgrade of revision 0003 was interrupted" in interrupted["error"]
        assert "migration-runner resolve" in interrupted["error"]
        assert result.seconds < 25  # wait gives up at once, not at MIGRATION_WAIT_TIMEOUT

    assert cli("resolve", "--mark", "applied", env=env).code == 0  # the operator found it fully reverted
    assert cli("check", "0002", env=env).code == 0
    assert cli("wait", "0002", env=env).code == 0


def test_wait_and_check_hold_back_while_a_runner_is_inside_an_unfinished_step(cli: Cli, pg_url: str) -> None:
    """The same row while the migration lock is held is a step in progress: wait keeps waiting, check says 1."""
    migrated(cli, pg_url, revisions=2)
    query(
        pg_url,
        "INSERT INTO migration_runner_history (tool, revision, direction, outcome, transactional, started_at, run_id, "
        "host) VALUES ('alembic', '0002', 'down', 'started', false, now(), 'running', 'pod-a')",
    )
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_WAIT_TIMEOUT": "1"}
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key_for(pg_url),))
        waiting = cli("wait", env=env)
        checking = cli("check", env=env)
    assert waiting.code == 75, waiting.stdout
    assert waiting.named("wait.waiting")[0]["in_progress"] == "0002"
    assert checking.code == 1, checking.stdout
    assert checking.one("check.pending")["in_progress"] == "0002"
    # The holder is gone: nobody is at work on it, so it was interrupted.
    assert cli("wait", env=env).code == 65


def test_a_declared_noop_downgrade_runs_through_and_is_recorded_as_noop(cli: Cli, any_url: str) -> None:
    """An empty downgrade() is refused (78) unless MIGRATION_NOOP_DOWNGRADES lists it; then it is reverted, noop.

    A typo in the list is 78 too, naming it: a silently ignored entry would refuse again, or worse.
    """
    make_project(cli.cwd, revisions=3, bodies={3: 'op.execute("UPDATE applied_log SET pid = pid")'})
    three = cli.cwd / "migrations" / "versions" / "0003_r.py"
    three.write_text(three.read_text().replace('    op.drop_table("t_0003")', "    pass"))
    env = {"MIGRATION_DATABASE_URL": any_url}
    assert cli("upgrade", env=env).code == 0

    refused = cli("downgrade", "0001", env=env)
    typo = cli("downgrade", "0001", env={**env, "MIGRATION_NOOP_DOWNGRADES": "0009"})
    declared = cli("downgrade", "0001", env={**env, "MIGRATION_NOOP_DOWNGRADES": "0003"})
    history = json.loads(cli("history", "--json", env=env).stdout)

    assert refused.code == 78, refused.stdout
    assert "MIGRATION_NOOP_DOWNGRADES" in refused.one("config.invalid")["error"]
    assert typo.code == 78 and "0009" in typo.one("config.invalid")["error"]
    assert declared.code == 0, declared.stdout + declared.stderr
    assert [e["revision"] for e in declared.named("revision.reverted")] == ["0003", "0002"]
    reverts = {row["revision"]: row["resolution"] for row in history["rows"] if row["direction"] == "down"}
    assert reverts == {"0003": "noop", "0002": None}
    jsonschema.validate(history, HISTORY_SCHEMA)
