"""Wall time and peak RSS of a no-op upgrade: migration-runner vs `alembic upgrade head`.

A database already at head is what every init-container sees on every pod
start, so this path is measured on its own. Usage::

    uv run python bench/noop_upgrade.py [--revisions 100] [--runs 10]

It creates a database on TEST_POSTGRES_URL (default: the local server),
migrates it to head once, then times both commands on the same project and
prints the median and max of each. Drops the database at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import make_project  # the tests' project generator

BIN = Path(sys.executable).parent


def measure(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """Run once; return (wall seconds, peak RSS in KiB) of that child alone (os.wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} exited {os.waitstatus_to_exitcode(status)}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=100)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    admin = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"mr_bench_{uuid.uuid4().hex[:8]}"
    url = sqlalchemy.make_url(admin).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            project = make_project(Path(tmp) / "project", revisions=args.revisions)
            ini = project / "alembic.ini"
            ini.write_text(ini.read_text().replace("sqlite:///./migration-runner.db", url))
            env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATION_")}
            env |= {"MIGRATION_DATABASE_URL": url, "MIGRATION_ENVIRONMENT": "production"}
            commands = {
                "migration-runner upgrade": [str(BIN / "migration-runner"), "upgrade"],
                "alembic upgrade head": [str(BIN / "alembic"), "upgrade", "head"],
            }
            measure(commands["migration-runner upgrade"], project, env)  # to head, once
            print(
                f"no-op upgrade, {args.revisions} revisions, {args.runs} runs each, "
                f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}"
            )
            print(f"{'command':<26} {'median s':>9} {'max s':>7} {'median RSS MiB':>15} {'max RSS MiB':>12}")
            for label, command in commands.items():
                samples = [measure(command, project, env) for _ in range(args.runs)]
                walls = [s[0] for s in samples]
                rss = [s[1] / 1024 for s in samples]
                print(
                    f"{label:<26} {statistics.median(walls):>9.3f} {max(walls):>7.3f} "
                    f"{statistics.median(rss):>15.1f} {max(rss):>12.1f}"
                )
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
