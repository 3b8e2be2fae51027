"""SIGKILL at random moments: never a lost or doubled revision, never a stale lock."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from support import Cli, advisory_locks_held, applied_counts, make_project, query, rev_id, version

REVISIONS = 50
TRIALS = 30
SEED = 20261122  # fixed, so a failing trial can be replayed


def tables(url: str) -> set[str]:
    rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '^t_[0-9]+$'")
    return {row[0] for row in rows}


def wait_for_progress(url: str, runner: subprocess.Popen[str], timeout: float = 30) -> None:
    """Return once the first revision has committed (its side-effect row is visible)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and runner.poll() is None:
        with contextlib.suppress(psycopg.Error):
            if query(url, "SELECT count(*) FROM applied_log")[0][0] >= 1:
                return
        time.sleep(0.01)
    raise AssertionError("the runner applied nothing within 30 s")


def wait_for_other_sessions_to_end(url: str, timeout: float = 10) -> None:
    """Wait until the killed runner's server sessions are gone.

    A client killed right after sending COMMIT leaves the server to finish that
    transaction on its own; reading before the session ends can see the
    version table before the commit and the side effects after it.
    """
    sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    deadline = time.monotonic() + timeout
    while query(url, sql) != [(0,)]:
        if time.monotonic() > deadline:
            raise AssertionError("the killed runner's sessions outlived it by 10 s")
        time.sleep(0.02)


def wait_for_no_advisory_lock(url: str, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while (held := advisory_locks_held(url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return held


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments(cli: Cli, pg_databases: Callable[[], str], tmp_path: Path) -> None:
    """30 runs of 50 revisions killed at random: each leaves exactly 1..k, no lock, and a re-run ends at head."""
    bodies = {
        n: f'op.create_table("t_{rev_id(n)}", sa.Column("id", sa.Integer))\nop.execute("SELECT pg_sleep(0.02)")'
        for n in range(1, REVISIONS + 1)
    }
    make_project(cli.cwd, revisions=REVISIONS, bodies=bodies)
    rng = random.Random(SEED)
    report = []
    for trial in range(TRIALS):
        url = pg_databases()
        env = {"MIGRATION_DATABASE_URL": url}
        runner = cli.start(env=env)
        # Kill relative to the migration itself, whatever the start-up takes on this machine:
        # one trial in five during start-up or lock-taking, the rest while revisions apply.
        if rng.random() < 0.2:
            delay = rng.uniform(0.0, 0.8)
        else:
            wait_for_progress(url, runner)
            delay = rng.uniform(0.0, 1.4)  # applying all 50 takes about 1.3 s
        time.sleep(delay)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
        wait_for_other_sessions_to_end(url)

        current = version(url) if query(url, "SELECT to_regclass('alembic_version')") != [(None,)] else []
        k = int(current[0]) if current else 0
        counts = applied_counts(url) if k else {}
        expected = {rev_id(n): 1 for n in range(1, k + 1)}
        lost_or_doubled = sum(abs(counts.get(r, 0) - 1) for r in expected) + sum(
            c for r, c in counts.items() if r not in expected
        )
        assert counts == expected, f"trial {trial}: version {k}, side effects {counts}"
        assert tables(url) == {f"t_{r}" for r in expected}, f"trial {trial}: schema does not match revision {k}"
        assert wait_for_no_advisory_lock(url) == 0, f"trial {trial}: an advisory lock outlived the killed runner"

        rerun = cli(env=env)
        assert rerun.code == 0, f"trial {trial}: {rerun.stdout[-2000:]}"
        assert version(url) == [rev_id(REVISIONS)]
        assert applied_counts(url) == {rev_id(n): 1 for n in range(1, REVISIONS + 1)}
        report.append(
            {
                "trial": trial,
                "kill_after_seconds": round(delay, 3),
                "revision_at_kill": k,
                "lost_or_doubled": lost_or_doubled,
            }
        )

    mid_run = [r for r in report if 0 < r["revision_at_kill"] < REVISIONS]
    assert len(mid_run) >= TRIALS // 2, f"only {len(mid_run)} kills landed mid-run: {report}"
    (tmp_path / "chaos-report.json").write_text(json.dumps(report, indent=1))
    print(
        f"\nSIGKILL chaos: {TRIALS} trials, {len(mid_run)} killed mid-run, re-runs 0 failed, "
        f"lost or doubled {sum(r['lost_or_doubled'] for r in report)}"
    )
