"""MIGRATION_BEFORE_APPLY_COMMAND: the safety net run under the lock before the first revision.

The command here is a small Python program that records its environment in a
file (one JSON object per run), so each test sees how often it ran and what it
was told. PostgreSQL trusts local connections, so a URL with a password still
connects: the password must reach the command only as PGPASSWORD.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy
from support import Cli, advisory_locks_held, make_project, query, version

PASSWORD = "before-apply-s3cret"  # noqa: S105  (a test value the output must never show)


def recorder(tmp_path: Path, *, exit_status: int = 0, sleep: float = 0.0, stderr: str = "") -> tuple[list[str], Path]:
    """A command that appends its environment to a file, then writes ``stderr`` and exits ``exit_status``."""
    log = tmp_path / "before-apply.jsonl"
    script = tmp_path / "record.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os, sys, time
            with open({str(log)!r}, "a") as out:
                out.write(json.dumps(dict(os.environ)) + "\\n")
            time.sleep({sleep})
            sys.stderr.write({stderr!r})
            sys.exit({exit_status})
            """
        )
    )
    return [sys.executable, str(script)], log


def runs(log: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def with_password(url: str) -> str:
    return sqlalchemy.make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def test_runs_once_when_something_is_pending_and_never_on_a_no_op(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """The before-apply command runs once under the lock before the first revision, and not at all on a no-op."""
    make_project(cli.cwd, revisions=3)
    argv, log = recorder(tmp_path)
    env = {"MIGRATION_DATABASE_URL": with_password(pg_url), "MIGRATION_BEFORE_APPLY_COMMAND": json.dumps(argv)}

    first = cli("upgrade", env=env)
    second = cli("upgrade", env=env)

    assert first.code == 0, first.stderr
    assert second.code == 0, second.stderr
    assert version(pg_url) == ["0003"]
    (seen,) = runs(log)  # once: the no-op did not run it
    events = [e["event"] for e in first.events]
    assert events.index("lock.acquired") < events.index("before_apply.started") < events.index("upgrade.started")
    assert first.named("before_apply.finished")[0]["duration_seconds"] >= 0
    assert not second.named("before_apply.started")
    database = sqlalchemy.make_url(pg_url).database
    assert seen["MIGRATION_DATABASE_NAME"] == seen["PGDATABASE"] == database
    assert seen["MIGRATION_PENDING"] == "0001 0002 0003"
    assert seen["MIGRATION_CURRENT"] == ""
    assert seen["MIGRATION_TARGET_REVISIONS"] == "0003"
    assert seen["MIGRATION_DIRECTION"] == "up"
    assert seen["MIGRATION_RUN_ID"] == first.named("run.started")[0]["run_id"]
    assert seen["PGPASSWORD"] == PASSWORD
    # The password reaches it as PGPASSWORD only: no URL, no other variable holding it.
    assert "MIGRATION_DATABASE_URL" not in seen
    assert [name for name, value in seen.items() if PASSWORD in value] == ["PGPASSWORD"]
    assert not [name for name, value in seen.items() if "postgresql://" in value or "postgresql+" in value]
    assert PASSWORD not in first.stdout + first.stderr


def test_a_failing_command_applies_nothing_and_exits_75(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A before-apply command that exits non-zero: 75, nothing applied, the lock freed, its output redacted."""
    make_project(cli.cwd, revisions=2)
    argv, log = recorder(tmp_path, exit_status=3, stderr=f"pg_dump: error: no space left (password {PASSWORD})\n")
    env = {
        "MIGRATION_DATABASE_URL": with_password(pg_url),
        "MIGRATION_BEFORE_APPLY_COMMAND": json.dumps(argv),
        "MIGRATION_OUTPUT": "json",
    }

    result = cli("upgrade", env=env)

    assert result.code == 75, result.stderr
    assert len(runs(log)) == 1
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]  # nothing applied
    assert advisory_locks_held(pg_url) == 0
    document = json.loads(result.stdout)
    assert document["error"]["class"] == "BeforeApplyFailed"
    assert document["outcome"] == "before_apply_failed"  # 75, but not a "timeout": the backup failed
    assert result.one("run.finished")["outcome"] == "before_apply_failed"
    assert document["error"]["command_exit_status"] == 3
    assert document["error"]["stderr"] == ["pg_dump: error: no space left (password ***)"]
    assert "exited 3" in document["error"]["message"]
    assert "nothing was applied" in document["error"]["message"]
    assert result.named("before_apply.failed")
    assert PASSWORD not in result.stdout + result.stderr


def test_a_command_past_its_timeout_is_stopped_and_exits_75(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """A before-apply command past MIGRATION_BEFORE_APPLY_TIMEOUT is stopped: 75, nothing applied, the lock freed."""
    make_project(cli.cwd, revisions=1)
    argv, log = recorder(tmp_path, sleep=60)
    env = {
        "MIGRATION_DATABASE_URL": pg_url,
        "MIGRATION_BEFORE_APPLY_COMMAND": json.dumps(argv),
        "MIGRATION_BEFORE_APPLY_TIMEOUT": "1",
    }

    result = cli("upgrade", env=env, timeout=40)  # the command sleeps 60 s unless it is stopped

    assert result.code == 75, result.stderr
    assert "MIGRATION_BEFORE_APPLY_TIMEOUT=1" in result.named("before_apply.failed")[0]["error"]
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]
    assert advisory_locks_held(pg_url) == 0
    assert len(runs(log)) == 1


def test_five_concurrent_runners_run_it_once(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    """Five runners at once: only the lock holder with pending revisions runs the before-apply command."""
    make_project(cli.cwd, revisions=5)
    argv, log = recorder(tmp_path, sleep=0.5)
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_BEFORE_APPLY_COMMAND": json.dumps(argv)}

    started = time.monotonic()
    processes = [cli.start("upgrade", env=env) for _ in range(5)]
    results = [cli.finish(process, started, timeout=90) for process in processes]

    assert [r.code for r in results] == [0] * 5, [r.stderr for r in results]
    assert len(runs(log)) == 1
    assert version(pg_url) == ["0005"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("pg_dump -Fc -f /backup/x.dump", "must be a JSON array of strings"),
        ("[]", "at least 1 item"),
        ('["/nonexistent/pg_dump"]', "cannot run '/nonexistent/pg_dump'"),
    ],
)
def test_a_bad_command_is_a_configuration_error(cli: Cli, pg_url: str, value: str, expected: str) -> None:
    """An unusable MIGRATION_BEFORE_APPLY_COMMAND is 78 naming it, with no traceback and nothing applied."""
    make_project(cli.cwd, revisions=1)

    result = cli("upgrade", env={"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_BEFORE_APPLY_COMMAND": value})

    assert result.code == 78, result.stderr
    assert expected in result.named("config.invalid")[0]["error"]
    assert "Traceback" not in result.stdout + result.stderr
    assert query(pg_url, "SELECT to_regclass('alembic_version')") == [(None,)]
