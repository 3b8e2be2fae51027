"""Signals reach a runner whose env.py migrates in another thread or event loop (issue 23, point 9).

A real project's env.py runs Alembic in a worker thread (``anyio.to_thread.run_sync``, here
asyncio's ``to_thread``). A SIGTERM then interrupted the main thread inside the event loop:
three tries gave exit 0, 65 ("not enough values to unpack") and 139 (a segfault). Now the signal
is recorded and raised in the migrating thread at its next safe point (the next statement, the
version-apply callback, the end of the revision; a running PostgreSQL statement is cancelled),
and the run ends with 143/130, the running revision rolled back and the lock released.
"""

from __future__ import annotations

import signal
import time

import pytest
from support import Cli, advisory_locks_held, applied_counts, make_project, query, rev_id, wait_until

# The migrations run in a worker thread of an asyncio event loop, as anyio.to_thread.run_sync does.
THREADED_ENV_PY = """
import asyncio

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def run_migrations():
    engine = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


async def main():
    await asyncio.to_thread(run_migrations)


asyncio.run(main())
"""

# Revision 2: a long statement (cancelled at once), or Python work and then a statement (the safe point).
IN_STATEMENT = (
    'op.create_table("t_0002", sa.Column("id", sa.Integer))\nif os.environ.get("SLOW"):\n'
    '    op.execute("SELECT pg_sleep(60)")'
)
BETWEEN_STATEMENTS = (
    'op.create_table("t_0002", sa.Column("id", sa.Integer))\n'
    'op.execute("CREATE TABLE working (id int)")\n'
    "import time\n"
    'time.sleep(3 if os.environ.get("SLOW") else 0)\n'
    'op.execute("SELECT 1")'
)
RUNNING = {
    IN_STATEMENT: "SELECT count(*) FROM pg_stat_activity WHERE starts_with(query, 'SELECT pg_sleep(60)')"
    " AND state = 'active' AND datname = current_database()",
    BETWEEN_STATEMENTS: "SELECT count(*) FROM pg_stat_activity WHERE starts_with(query, 'CREATE TABLE working')"
    " AND datname = current_database()",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("body", [IN_STATEMENT, BETWEEN_STATEMENTS], ids=["in-a-statement", "between-statements"])
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["TERM", "INT"])
def test_a_signal_while_env_py_migrates_in_a_worker_thread_ends_the_run_cleanly(
    cli: Cli, pg_url: str, body: str, signum: int, code: int
) -> None:
    """A signal while env.py migrates in a worker thread gives 143/130, rolls back the revision and frees the lock."""
    make_project(cli.cwd, revisions=3, env_py=THREADED_ENV_PY, bodies={2: body})
    started = time.monotonic()
    env = {"MIGRATION_DATABASE_URL": pg_url, "MIGRATION_GRACE_PERIOD": "30"}
    runner = cli.start("upgrade", env={**env, "SLOW": "1"})
    wait_until(lambda: query(pg_url, RUNNING[body]) != [(0,)], 60, "revision 2 to run")
    runner.send_signal(signum)
    result = cli.finish(runner, started, timeout=60)

    assert result.code == code, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    interrupted = result.one("run.interrupted")
    assert interrupted["revision"] == rev_id(2) and interrupted["partially_applied"] is False
    assert result.named("run.abandoned") == []  # stopped by itself, not by the grace period's watchdog
    assert applied_counts(pg_url) == {rev_id(1): 1}
    assert query(pg_url, "SELECT to_regclass('t_0002'), to_regclass('working')") == [(None, None)]
    wait_until(lambda: advisory_locks_held(pg_url) == 0, 10, "the lock to be released")
    again = cli("upgrade", env=env)  # nothing the next run cannot explain: it finishes the job
    assert again.code == 0, again.stdout[-2000:]
    assert applied_counts(pg_url) == {rev_id(1): 1, rev_id(2): 1, rev_id(3): 1}
