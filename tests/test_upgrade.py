"""upgrade, check, current and wait against a real PostgreSQL database."""

from __future__ import annotations

import json
import time

import pytest
from support import (
    SHARED_CONNECTION_ENV_PY,
    Cli,
    advisory_locks_held,
    applied_counts,
    make_project,
    query,
    rev_id,
    version,
)


def test_upgrade_from_empty_applies_every_revision_once_and_logs_each(cli: Cli, pg_url: str) -> None:
    """An empty database ends at head; each revision gets one revision.applied event with its duration."""
    make_project(cli.cwd, revisions=5)

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0, result.stderr + result.stdout
    assert version(pg_url) == [rev_id(5)]
    assert applied_counts(pg_url) == {rev_id(n): 1 for n in range(1, 6)}
    applied = result.named("revision.applied")
    assert [e["revision"] for e in applied] == [rev_id(n) for n in range(1, 6)]
    assert all(e["message"] == f"revision {n}" for n, e in enumerate(applied, 1))
    assert all(isinstance(e["duration_seconds"], float) and e["duration_seconds"] >= 0 for e in applied)
    assert result.one("run.finished")["exit_code"] == 0
    assert advisory_locks_held(pg_url) == 0


def test_every_event_has_timestamp_level_dotted_name_and_run_fields(cli: Cli, pg_url: str) -> None:
    """JSON lines on stdout carry a UTC timestamp, level, dotted event and the run's id, environment and host."""
    make_project(cli.cwd, revisions=2)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0
    lines = result.stdout.splitlines()
    assert lines and all(json.loads(line) for line in lines)  # every stdout line is JSON
    run_ids = {e["run_id"] for e in result.events}
    assert len(run_ids) == 1
    for event in result.events:
        assert event["timestamp"].endswith("Z") and "T" in event["timestamp"]
        assert event["level"] in {"debug", "info", "warning", "error"}
        assert "." in event["event"], event
        assert event["environment"] == "development" and event["host"]


def test_rerun_is_a_noop_without_the_lock(cli: Cli, pg_url: str) -> None:
    """A second upgrade exits 0, says there was nothing to do, and applies nothing again."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli(env=env).code == 0

    again = cli(env=env)

    assert again.code == 0
    assert again.one("upgrade.noop")["reason"] == "already at target"
    assert again.named("revision.applied") == [] and again.named("lock.acquired") == []
    assert applied_counts(pg_url) == {rev_id(n): 1 for n in range(1, 4)}


def test_check_exits_1_and_lists_pending_then_0_after_upgrade(cli: Cli, pg_url: str) -> None:
    """check is read-only: before the upgrade it lists what is pending, after it reports ok."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url}

    before = cli("check", env=env)
    assert before.code == 1
    pending = before.one("check.pending")["pending"]
    assert [p["revision"] for p in pending] == [rev_id(1), rev_id(2), rev_id(3)]
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]  # check wrote nothing

    assert cli(env=env).code == 0
    after = cli("check", env=env)
    assert after.code == 0
    assert after.one("check.ok")["current"] == [rev_id(3)]


def test_current_prints_text_and_json(cli: Cli, pg_url: str) -> None:
    """current shows the database's revisions, the heads and the pending ones, as text or the result document."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TARGET": rev_id(2)}
    assert cli(env=env).code == 0

    as_json = cli("current", "--json", env={"MIGRATION_DATABASE_URL": pg_url})
    assert as_json.code == 0
    document = json.loads(as_json.stdout)
    assert document["command"] == "current"
    assert document["from"] == document["to"] == [rev_id(2)]
    assert document["heads"] == [rev_id(3)]
    assert document["pending"] == [{"revision": rev_id(3), "id": rev_id(3), "message": "revision 3"}]

    as_text = cli("current", env={"MIGRATION_DATABASE_URL": pg_url})
    assert as_text.code == 0
    assert f"current: {rev_id(2)}" in as_text.stdout and "pending: 1" in as_text.stdout


def test_target_stops_at_the_named_revision(cli: Cli, pg_url: str) -> None:
    """MIGRATION_TARGET=<rev> applies up to that revision and no further."""
    make_project(cli.cwd, revisions=4)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_TARGET": rev_id(2)})

    assert result.code == 0
    assert version(pg_url) == [rev_id(2)]
    assert set(applied_counts(pg_url)) == {rev_id(1), rev_id(2)}


@pytest.mark.timeout(60)
def test_wait_returns_once_another_process_migrates(cli: Cli, pg_url: str) -> None:
    """wait polls read-only and exits 0 as soon as an upgrade elsewhere reaches the heads."""
    make_project(cli.cwd, revisions=3)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_WAIT_TIMEOUT": "30"}
    started = time.monotonic()
    waiter = cli.start("wait", env=env)
    time.sleep(1.5)
    assert waiter.poll() is None, "wait returned before anything migrated"

    assert cli(env={"MIGRATION_DATABASE_URL": pg_url}).code == 0
    result = cli.finish(waiter, started, timeout=30)

    assert result.code == 0, result.stdout
    assert result.one("wait.finished")["current"] == [rev_id(3)]
    assert result.named("lock.acquired") == []


@pytest.mark.timeout(30)
def test_wait_exits_75_when_nobody_migrates(cli: Cli, pg_url: str) -> None:
    """wait gives up with exit 75 after MIGRATION_WAIT_TIMEOUT seconds and leaves the database alone."""
    make_project(cli.cwd, revisions=2)

    result = cli("wait", env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_WAIT_TIMEOUT": "2"})

    assert result.code == 75
    assert "wait.timeout" in {e["event"] for e in result.events}
    assert result.one("run.finished")["duration_seconds"] >= 2  # the whole timeout; the test's own bounds the rest
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]


def test_env_py_using_the_shared_connection(cli: Cli, pg_url: str) -> None:
    """An env.py that takes config.attributes['connection'] migrates on the runner's connection."""
    make_project(cli.cwd, revisions=3, env_py=SHARED_CONNECTION_ENV_PY)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0, result.stdout
    assert version(pg_url) == [rev_id(3)]
    assert applied_counts(pg_url) == {rev_id(n): 1 for n in range(1, 4)}


def test_env_py_file_config_does_not_replace_the_runner_logging(cli: Cli, pg_url: str) -> None:
    """The template env.py calls fileConfig(); the runner's JSON events go on, Alembic's text format never shows."""
    make_project(cli.cwd, revisions=2)

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 0
    assert "INFO  [alembic" not in result.stderr + result.stdout
    assert len(result.named("revision.applied")) == 2
    assert result.one("run.finished")["outcome"] == "success"


def test_failing_revision_exits_65_keeps_earlier_revisions_and_frees_the_lock(cli: Cli, pg_url: str) -> None:
    """A SQL error at revision 3 of 4: exit 65 naming it, 1-2 stay applied, the next runner gets the lock at once."""
    make_project(cli.cwd, revisions=4, bodies={3: 'op.execute("ALTER TABLE no_such_table ADD COLUMN x int")'})
    env = {"MIGRATION_DATABASE_URL": pg_url}

    failed = cli(env=env)

    assert failed.code == 65
    event = failed.one("revision.failed")
    assert event["revision"] == rev_id(3)
    assert event["sqlstate"] == "42P01"  # undefined_table
    assert "no_such_table" in event["error"]
    assert version(pg_url) == [rev_id(2)]
    assert applied_counts(pg_url) == {rev_id(1): 1, rev_id(2): 1}
    assert query(pg_url, "SELECT to_regclass('t_0003')") == [(None,)]
    assert advisory_locks_held(pg_url) == 0

    make_project(cli.cwd, revisions=4)  # the fix ships
    fixed = cli(env=env)
    assert fixed.code == 0
    assert fixed.named("lock.waiting") == []  # the failed run released its lock: taken at the first try
    assert version(pg_url) == [rev_id(4)]
    assert applied_counts(pg_url) == {rev_id(n): 1 for n in range(1, 5)}


def test_python_error_in_a_revision_exits_65_with_its_class(cli: Cli, pg_url: str) -> None:
    """A revision raising a Python exception is a failed migration, named by revision and exception class."""
    make_project(cli.cwd, revisions=2, bodies={2: 'raise RuntimeError("backfill source missing")'})

    result = cli(env={"MIGRATION_DATABASE_URL": pg_url})

    assert result.code == 65
    event = result.one("revision.failed")
    assert event["revision"] == rev_id(2) and event["sqlstate"] is None
    revision = cli.cwd / "migrations" / "versions" / "0002_r.py"
    line = next(n for n, text in enumerate(revision.read_text().splitlines(), 1) if "RuntimeError" in text)
    assert event["error"] == f"RuntimeError: backfill source missing (at migrations/versions/0002_r.py:{line})"
    assert event["file"] == f"migrations/versions/0002_r.py:{line}" and event["statement"] is None
    assert "Traceback" not in result.stdout + result.stderr
    assert version(pg_url) == [rev_id(1)]


def test_branches_are_all_applied_with_heads_and_head_is_refused(cli: Cli, pg_url: str) -> None:
    """Two heads: target 'heads' applies both branches; 'head' is a configuration error (78)."""
    make_project(cli.cwd, revisions=3, down_revisions={3: rev_id(1)})  # 2 and 3 both follow 1
    env = {"MIGRATION_DATABASE_URL": pg_url}

    refused = cli(env={**env, "MIGRATION_TARGET": "head"})
    assert refused.code == 78
    assert "several" in refused.one("config.invalid")["error"]

    result = cli(env=env)
    assert result.code == 0
    assert version(pg_url) == [rev_id(2), rev_id(3)]


def test_database_at_an_unknown_revision(cli: Cli, pg_url: str) -> None:
    """A database ahead of the code (an app rollback) exits 66, or 0 when MIGRATION_ALLOW_UNKNOWN_REVISION is set."""
    make_project(cli.cwd, revisions=2)
    env = {"MIGRATION_DATABASE_URL": pg_url}
    assert cli(env=env).code == 0
    query(pg_url, "UPDATE alembic_version SET version_num = 'f00dfeed'")

    refused = cli(env=env)
    assert refused.code == 66
    assert "f00dfeed" in refused.one("revision.unknown")["error"]

    allowed = {**env, "MIGRATION_ALLOW_UNKNOWN_REVISION": "true"}
    assert cli(env=allowed).code == 0
    assert cli("wait", env={**allowed, "MIGRATION_WAIT_TIMEOUT": "5"}).code == 0
    assert version(pg_url) == ["f00dfeed"]
