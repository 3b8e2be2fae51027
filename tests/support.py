"""Test helpers: Alembic projects, the CLI as a user runs it, and PostgreSQL queries."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy
import yaml

from runner import locks

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
TEMPLATE_ENV_PY = QUICKSTART / "migrations" / "env.py"  # as `alembic init` wrote it

# env.py from the Alembic cookbook, "Sharing a Connection across one or more programmatic migration commands".
SHARED_CONNECTION_ENV_PY = """
from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
target_metadata = None


def run(connection):
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


connectable = config.attributes.get("connection", None)
if connectable is None:
    engine = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        run(connection)
else:
    config.attributes["env_py_used_shared_connection"] = True
    run(connectable)
"""

REVISION = '''"""{message}

Revision ID: {rev}
Revises: {down}
"""
import os

from alembic import op
import sqlalchemy as sa

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{body}
    op.execute("INSERT INTO applied_log (revision, pid) VALUES ('{rev}', %d)" % os.getpid())


def downgrade():
    op.drop_table("t_{rev}")
'''


def rev_id(number: int) -> str:
    """The id of the generated revision ``number`` (1-based)."""
    return f"{number:04d}"


def make_project(
    root: Path,
    revisions: int = 3,
    *,
    env_py: str | None = None,
    bodies: Mapping[int, str] | None = None,
    down_revisions: Mapping[int, str | tuple[str, ...] | None] | None = None,
) -> Path:
    """Write an Alembic project with ``revisions`` linear revisions.

    Revision ``k`` creates table ``t_<id>`` and inserts one row into
    ``applied_log`` (created by revision 1), so a revision applied twice shows
    as two rows. ``bodies[k]`` replaces revision k's table creation.

    Returns:
        The project directory (it holds ``alembic.ini``).
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(QUICKSTART / "alembic.ini", root / "alembic.ini")
    scripts = root / "migrations"
    (scripts / "versions").mkdir(parents=True, exist_ok=True)
    shutil.copy(QUICKSTART / "migrations" / "script.py.mako", scripts / "script.py.mako")
    if env_py is None:
        shutil.copy(TEMPLATE_ENV_PY, scripts / "env.py")
    else:
        (scripts / "env.py").write_text(env_py)
    bodies = bodies or {}
    down_revisions = down_revisions or {}
    for number in range(1, revisions + 1):
        rev = rev_id(number)
        body = bodies.get(number, f'op.create_table("t_{rev}", sa.Column("id", sa.Integer))')
        if number == 1:
            body = (
                'op.create_table("applied_log", sa.Column("revision", sa.Text), sa.Column("pid", sa.Integer))\n' + body
            )
        down = down_revisions.get(number, rev_id(number - 1) if number > 1 else None)
        (scripts / "versions" / f"{rev}_r.py").write_text(
            REVISION.format(message=f"revision {number}", rev=rev, down=down, body=textwrap.indent(body, "    "))
        )
    return root


@dataclass
class Result:
    """A finished CLI run: exit code, output, and the JSON log events it printed."""

    code: int
    stdout: str
    stderr: str
    seconds: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def named(self, event: str) -> list[dict[str, Any]]:
        """The events with this name, in order."""
        return [e for e in self.events if e.get("event") == event]

    def one(self, event: str) -> dict[str, Any]:
        """The single event with this name (fails the test otherwise)."""
        found = self.named(event)
        assert len(found) == 1, f"expected one {event!r} event, got {len(found)}:\n{self.stdout}\n{self.stderr}"
        return found[0]


def parse_events(*streams: str) -> list[dict[str, Any]]:
    """Every line that is a JSON object, from the given outputs."""
    events = []
    for stream in streams:
        for line in stream.splitlines():
            if line.startswith("{") and line.endswith("}"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return events


class Cli:
    """Runs ``python -m runner`` in a clean environment, as a user's shell or a pod would."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        self.base_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("MIGRATION_") and k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
        }
        self.base_env["MIGRATION_LOG_FORMAT"] = "json"

    def env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(self.base_env)
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def start(self, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "runner", *args],
            cwd=cwd or self.cwd,
            env=self.env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, process: subprocess.Popen[str], started: float, timeout: float = 60) -> Result:
        stdout, stderr = process.communicate(timeout=timeout)
        return Result(process.returncode, stdout, stderr, time.monotonic() - started, parse_events(stdout, stderr))

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
    ) -> Result:
        started = time.monotonic()
        return self.finish(self.start(*args, env=env, cwd=cwd), started, timeout)


def every_channel(cli: Cli, tmp_path: Path, env: Mapping[str, str], *args: str) -> tuple[int, str]:
    """Run once at debug; everything a user or a scraper reads (stdout, stderr, termination message, textfile)."""
    termination, textfile = tmp_path / "termination-log", tmp_path / "metrics.prom"
    for path in (termination, textfile):
        path.unlink(missing_ok=True)
    result = cli(
        *args,
        env={
            **env,
            "MIGRATION_LOG_LEVEL": "debug",
            "MIGRATION_TERMINATION_LOG": str(termination),
            "MIGRATION_METRICS_TEXTFILE": str(textfile),
        },
    )
    files = [path.read_text() for path in (termination, textfile) if path.exists()]
    return result.code, "\n".join([result.stdout, result.stderr, *files])


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a PostgreSQL URL and return its rows."""
    with psycopg.connect(url, autocommit=True) as connection:
        cursor = connection.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def applied_counts(url: str) -> dict[str, int]:
    """How many times each revision's side effect ran."""
    return dict(query(url, "SELECT revision, count(*) FROM applied_log GROUP BY revision ORDER BY revision"))


def version(url: str) -> list[str]:
    """The revisions in the version table."""
    return sorted(row[0] for row in query(url, "SELECT version_num FROM alembic_version"))


def applied(url: str, tool: str = "alembic") -> list[str]:
    """What the tool records as applied, read straight from its table, on PostgreSQL, MariaDB or SQLite.

    Alembic: the version table's revisions. Django: every ``django_migrations``
    row as ``app.name``, duplicates kept (a migration recorded twice shows twice).
    """
    sql = {
        "alembic": "SELECT version_num FROM alembic_version",
        "django": "SELECT app || '.' || name FROM django_migrations",
    }[tool]
    parsed = sqlalchemy.make_url(url)
    if parsed.get_backend_name() == "mysql":
        return sorted(row[0] for row in mysql_query(url, sql.replace("app || '.' || name", "CONCAT(app, '.', name)")))
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(parsed.database or "")) as connection:
            return sorted(row[0] for row in connection.execute(sql))
    return sorted(row[0] for row in query(url, sql))


def copy_django_example(destination: Path) -> Path:
    """A copy of examples/django at ``destination`` (a fresh directory): the project a Django test migrates."""
    ignored = shutil.ignore_patterns("__pycache__", "*.sqlite3")
    shutil.copytree(REPO / "examples" / "django", destination, ignore=ignored)
    return destination


def advisory_locks_held(url: str) -> int:
    """Advisory locks granted in this database right now."""
    sql = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    return int(query(url, sql)[0][0])


def mysql_connect(url: str) -> pymysql.connections.Connection[Any]:
    """A PyMySQL connection (autocommit) from a ``mysql://`` URL."""
    parsed = sqlalchemy.make_url(url)
    return pymysql.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        autocommit=True,
        connect_timeout=5,
    )


def mysql_query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on a MariaDB URL and return its rows."""
    with contextlib.closing(mysql_connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


def lock_key_for(url: str) -> int:
    """The key the runner derives for this PostgreSQL database's default version table.

    The database name is what the server reports (``current_database()``), so
    every URL form of one database gives this key.
    """
    return locks.derive_key(
        database_name=sqlalchemy.make_url(url).database or "", schema=None, version_table="alembic_version"
    )


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 50 ms until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


CHART = REPO / "helm" / "migration-runner"
HELM_APP = REPO / "examples" / "helm-app"
HELM = REPO / ".tools" / "bin" / "helm"


def helm(*args: str, cwd: Path = CHART) -> subprocess.CompletedProcess[str]:
    """Run the helm that `.ci/get-helm` installs."""
    if not HELM.exists():
        pytest.fail(f"{HELM} is missing: run `bash .ci/get-helm`")
    return subprocess.run([str(HELM), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def app_chart(where: Path, repository: str = f"file://{CHART}", *flags: str) -> Path:
    """A copy of examples/helm-app whose migration-runner dependency comes from `repository`, built.

    The example names the published OCI location; a test points it at this checkout's chart (or at a
    registry of its own) and runs `helm dependency update`, as a user would.
    """
    app = shutil.copytree(HELM_APP, where / "helm-app", ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    chart_yaml = app / "Chart.yaml"
    published = "repository: oci://ghcr.io/migration-runner/charts"
    assert published in chart_yaml.read_text()
    chart_yaml.write_text(chart_yaml.read_text().replace(published, f"repository: {repository}"))
    build = helm("dependency", "update", *flags, str(app), cwd=where)
    assert build.returncode == 0, build.stdout + build.stderr
    return app


def render(*args: str, chart: Path = CHART) -> list[dict[str, Any]]:
    """`helm template` of release `shop` in namespace `shop`: the rendered objects."""
    done = helm("template", "shop", str(chart), "--namespace", "shop", *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The one object of this kind."""
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@contextlib.contextmanager
def prometheus_server(argv: list[str], port: int, *, ready_within: float) -> Iterator[str]:
    """Run a Prometheus-family server (Prometheus, the Pushgateway) until the block ends: its base URL.

    Waits for its ``/-/ready`` endpoint, for at most ``ready_within`` seconds.
    """
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1):  # noqa: S310
                break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


class Watched:
    """A runner started with :meth:`Cli.start` whose log lines are read as they come.

    :meth:`wait_for` blocks until the runner has logged an event, so a test
    synchronises on what the runner reports, never on a sleep.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._arrived: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []

        def pump(stream: Any, sink: Callable[[str], None]) -> None:
            for line in stream:
                sink(line)
            sink(None)  # type: ignore[arg-type]

        self._out = threading.Thread(target=pump, args=(process.stdout, self._arrived.put), daemon=True)
        self._err = threading.Thread(target=pump, args=(process.stderr, self._stderr.append), daemon=True)
        self._out.start()
        self._err.start()
        self._ended = False

    def wait_for(self, event: str, timeout: float) -> dict[str, Any]:
        """The first event named ``event``; fails the test if the runner ends or ``timeout`` s pass first."""
        deadline = time.monotonic() + timeout
        for line in self.lines:
            found = parse_events(line)
            if found and found[0].get("event") == event:
                return found[0]
        while not self._ended:
            try:
                line = self._arrived.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self._ended = True
                break
            self.lines.append(line)
            found = parse_events(line)
            if found and found[0].get("event") == event:
                return found[0]
        printed = "".join(self.lines) + "".join(line for line in self._stderr if line is not None)
        raise AssertionError(f"no {event!r} event within {timeout} s:\n{printed}")

    def finish(self, timeout: float = 60) -> Result:
        """Wait for the exit and return everything it printed."""
        self.process.wait(timeout=timeout)
        self._out.join(timeout)
        self._err.join(timeout)
        while not self._ended:
            line = self._arrived.get(timeout=timeout)
            if line is None:
                break
            self.lines.append(line)
        stdout = "".join(self.lines)
        stderr = "".join(line for line in self._stderr if line is not None)
        return Result(
            self.process.returncode, stdout, stderr, time.monotonic() - self.started, parse_events(stdout, stderr)
        )
