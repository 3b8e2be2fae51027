"""The commands: ``upgrade``, ``check``, ``current``, ``wait`` and ``config``.

Each takes a :class:`Run` and returns an exit code, or raises one of the errors
in :mod:`runner.errors`; :mod:`runner.cli` turns those into exit codes.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.script import Script
from sqlalchemy.engine import Connection

from runner import database, locks
from runner.errors import DatabaseUnavailable, ExitCode, UnknownRevision, WaitTimeout
from runner.logs import get_logger
from runner.migrations import Applied, Project, VersionTable
from runner.settings import Settings

WAIT_REPORT_INTERVAL_SECONDS = 5.0
_WAIT_MAX_DELAY_SECONDS = 2.0


@dataclass
class Run:
    """What one invocation knows before it touches the database.

    Attributes:
        settings: the validated settings.
        cwd: the working directory (alembic.ini and relative paths).
        run_id: a random id, in every log event and in ``application_name``.
        host: this host's name; in Kubernetes, the pod name.
        as_json: ``current`` prints JSON instead of text.

    """

    settings: Settings
    cwd: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    host: str = field(default_factory=socket.gethostname)
    as_json: bool = False

    @property
    def application_name(self) -> str:
        """How this runner's connections appear in ``pg_stat_activity``."""
        return f"migration-runner {self.host} {self.run_id}"

    @property
    def version_table(self) -> VersionTable:
        """The version table the settings name."""
        return VersionTable(self.settings.version_table, self.settings.version_table_schema)

    def project(self) -> Project:
        """Load the Alembic project and validate the target against it.

        Raises:
            ConfigError: the project or the target is unusable.

        """
        project = Project(
            alembic_config=self.settings.alembic_config,
            script_location=self.settings.script_location,
            cwd=self.cwd,
        )
        project.target_revisions(self.settings.target)
        return project

    def read_heads(self, connection: Connection) -> tuple[str, ...]:
        """The database's current revisions."""
        table = self.version_table
        return database.read_heads(connection, version_table=table.name, schema=table.schema)

    def lock_key(self) -> int:
        """The advisory lock key: ``MIGRATION_LOCK_KEY`` or one derived from the database."""
        if self.settings.lock_key is not None:
            return locks.parse_key(self.settings.lock_key)
        return locks.derive_key(
            database_name=database.database_name(self.settings.url),
            schema=self.settings.version_table_schema,
            version_table=self.settings.version_table,
        )


def _describe(scripts: Sequence[Script]) -> list[dict[str, str]]:
    return [{"revision": s.revision, "message": s.doc} for s in scripts]


def _plan(run: Run, project: Project, current: Sequence[str], *, allow_unknown: bool) -> list[Script]:
    """The pending revisions, or none when the database is at a revision we lack and that is allowed.

    Raises:
        UnknownRevision: the database has revisions the script directory lacks.

    """
    missing = project.unknown(current)
    if not missing:
        return project.pending(current, run.settings.target)
    message = (
        f"the database is at revision {', '.join(missing)}, which the script directory does not have; "
        "was the application rolled back? Set MIGRATION_ALLOW_UNKNOWN_REVISION=true to accept it"
    )
    if allow_unknown:
        get_logger().warning("revision.unknown_allowed", current=list(current), unknown=missing)
        return []
    raise UnknownRevision(message, missing)


def upgrade(run: Run) -> ExitCode:
    """Apply the pending revisions under the migration lock.

    A database already at the target returns at once, without the lock: that is
    what every init-container sees on every pod start. Otherwise the lock is
    taken, the version table read again (another runner may have migrated
    meanwhile), and the revisions still pending are applied one transaction each.

    Returns:
        ``ExitCode.OK``.

    Raises:
        ConfigError, DatabaseUnavailable, LockTimeout, MigrationFailed, UnknownRevision.

    """
    log = get_logger()
    settings = run.settings
    url = settings.url
    project = run.project()
    allow = settings.allow_unknown_revision
    engine = database.make_engine(url, application_name=run.application_name)
    with database.connect(engine) as connection:
        current = run.read_heads(connection)
        if not _plan(run, project, current, allow_unknown=allow):
            log.info("upgrade.noop", current=list(current), target=settings.target, reason="already at target")
            return ExitCode.OK
        with locks.migration_lock(
            url, key=run.lock_key(), timeout=settings.lock_timeout, application_name=run.application_name
        ):
            current = run.read_heads(connection)  # another runner may have migrated meanwhile
            pending = _plan(run, project, current, allow_unknown=allow)
            if not pending:
                log.info(
                    "upgrade.noop",
                    current=list(current),
                    target=settings.target,
                    reason="another runner migrated while this one waited for the lock",
                )
                return ExitCode.OK
            log.info(
                "upgrade.started", current=list(current), target=settings.target, pending=[s.revision for s in pending]
            )

            def applied(revision: Applied) -> None:
                log.info(
                    "revision.applied",
                    revision=revision.revision,
                    message=revision.message,
                    duration_seconds=round(revision.duration_seconds, 6),
                )

            started = time.monotonic()
            project.upgrade(
                connection=connection,
                url=url,
                target=settings.target,
                version_table=run.version_table,
                on_applied=applied,
            )
            log.info(
                "upgrade.finished",
                current=list(run.read_heads(connection)),
                applied=len(pending),
                duration_seconds=round(time.monotonic() - started, 6),
            )
    return ExitCode.OK


def check(run: Run) -> ExitCode:
    """Compare the database with the target, read-only and without the lock.

    Returns:
        ``ExitCode.OK`` at (or past) the target, ``ExitCode.NOT_AT_TARGET`` with
        the pending revisions logged otherwise.

    """
    project = run.project()
    engine = database.make_engine(run.settings.url, application_name=run.application_name)
    with database.connect(engine) as connection:
        current = run.read_heads(connection)
    pending = _plan(run, project, current, allow_unknown=False)
    if pending:
        get_logger().warning(
            "check.pending", current=list(current), target=run.settings.target, pending=_describe(pending)
        )
        return ExitCode.NOT_AT_TARGET
    get_logger().info("check.ok", current=list(current), target=run.settings.target)
    return ExitCode.OK


def current(run: Run) -> ExitCode:
    """Print the database's revisions, the heads and what is pending (text or ``--json``)."""
    project = run.project()
    engine = database.make_engine(run.settings.url, application_name=run.application_name)
    with database.connect(engine) as connection:
        revisions = run.read_heads(connection)
    unknown = project.unknown(revisions)
    pending = [] if unknown else project.pending(revisions, run.settings.target)
    document: dict[str, Any] = {
        "current": list(revisions),
        "heads": list(project.heads()),
        "target": run.settings.target,
        "unknown": unknown,
        "pending": _describe(pending),
    }
    if run.as_json:
        print(json.dumps(document, indent=2))
    else:
        print(f"current: {' '.join(revisions) or '(empty)'}")
        print(f"heads:   {' '.join(document['heads'])}")
        if unknown:
            print(f"unknown: {' '.join(unknown)} (not in the script directory)")
        print(f"pending: {len(pending)}" + "".join(f"\n  {s.revision}  {s.doc}" for s in pending))
    return ExitCode.OK


def wait(run: Run) -> ExitCode:
    """Poll, read-only and without the lock, until the database is at the target.

    For application init-containers: the app starts only once the schema it
    needs is there. An unreachable database is polled like a pending one.

    Returns:
        ``ExitCode.OK``.

    Raises:
        WaitTimeout: ``MIGRATION_WAIT_TIMEOUT`` seconds passed.
        UnknownRevision: the database has revisions the script directory lacks.

    """
    log = get_logger()
    settings = run.settings
    project = run.project()
    engine = database.make_engine(settings.url, application_name=run.application_name)
    started = time.monotonic()
    deadline = started + settings.wait_timeout
    delay, next_report = 0.1, started
    state: dict[str, Any] = {}
    while True:
        try:
            with database.connect(engine) as connection:
                revisions = run.read_heads(connection)
            pending = _plan(run, project, revisions, allow_unknown=settings.allow_unknown_revision)
            if not pending:
                log.info("wait.finished", current=list(revisions), waited_seconds=round(time.monotonic() - started, 3))
                return ExitCode.OK
            state = {"current": list(revisions), "pending": [s.revision for s in pending]}
        except DatabaseUnavailable as error:
            state = {"error": error.message}
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(
                f"database not at {settings.target} after {settings.wait_timeout:g} s ({json.dumps(state)}); "
                "is the migration Job running? Raise MIGRATION_WAIT_TIMEOUT if it needs longer"
            )
        if now >= next_report:
            log.info("wait.waiting", waited_seconds=round(now - started, 3), target=settings.target, **state)
            next_report = now + WAIT_REPORT_INTERVAL_SECONDS
        time.sleep(min(random.uniform(delay / 2, delay), deadline - now))
        delay = min(delay * 2, _WAIT_MAX_DELAY_SECONDS)


def show_config(run: Run) -> ExitCode:
    """Print the effective settings as JSON; the database password is redacted."""
    json.dump(run.settings.redacted(), sys.stdout, indent=2)
    print()
    return ExitCode.OK
