"""The commands: ``upgrade``, ``check``, ``current``, ``wait`` and ``config``.

Each takes a :class:`Run` and returns an exit code, or raises one of the errors
in :mod:`runner.errors`; :mod:`runner.cli` turns those into exit codes.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tenacity
from alembic.script import Script
from sqlalchemy.engine import URL, Connection, Engine

from runner import database, locks, polling
from runner.errors import ConnectionLost, DatabaseUnavailable, ExitCode, MigrationFailed, UnknownRevision, WaitTimeout
from runner.logs import get_logger
from runner.migrations import Applied, Project, VersionTable
from runner.report import RunReport
from runner.settings import Settings

MAX_RECONNECTS = 10
# Lock not available, deadlock detected, serialization failure (PostgreSQL docs, "Appendix A").
RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01", "40001"})
_WAIT_FIRST_DELAY_SECONDS = 0.1


@dataclass
class Run:
    """What one invocation knows before it touches the database.

    Attributes:
        settings: the validated settings.
        cwd: the working directory (alembic.ini and relative paths).
        run_id: a random id, in every log event and in ``application_name``.
        report: the record of the run; also feeds the metrics.
    """

    settings: Settings
    cwd: Path
    report: RunReport
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def host(self) -> str:
        """The pod's name (Downward API) or else this host's name."""
        return self.settings.pod_name or socket.gethostname()

    @property
    def application_name(self) -> str:
        """How this runner's connections appear in ``pg_stat_activity``: namespace/pod and run id."""
        where = f"{self.settings.pod_namespace}/{self.host}" if self.settings.pod_namespace else self.host
        return f"migration-runner {where} {self.run_id}"

    def connect(self, engine: Engine, *, retry: bool = True) -> contextlib.AbstractContextManager[Connection]:
        """Open a connection, retried for ``MIGRATION_CONNECT_TIMEOUT`` seconds unless ``retry`` is False."""
        return database.connect(
            engine,
            retry_for=self.settings.connect_timeout if retry else 0.0,
            on_retry=lambda: self.report.retried("connect"),
        )

    def migration_url(self) -> URL:
        """The database URL with each revision's session timeouts in it, so env.py's own engine gets them too."""
        url = self.settings.url
        lock_ms = int(self.settings.ddl_lock_timeout * 1000)
        if database.family(url) == "postgresql":
            statement_ms = int(self.settings.statement_timeout * 1000)
            return database.with_session_settings(
                url, {"lock_timeout": str(lock_ms), "statement_timeout": str(statement_ms)}
            )
        if database.family(url) == "mysql" and lock_ms:
            return database.with_session_settings(url, {"lock_wait_timeout": str(max(1, lock_ms // 1000))})
        return url

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
        self.report.target = list(project.target_revisions(self.settings.target))
        self.report.heads = list(project.heads())
        return project

    def read_heads(self, connection: Connection) -> tuple[str, ...]:
        """The database's current revisions."""
        table = self.version_table
        revisions = database.read_heads(connection, version_table=table.name, schema=table.schema)
        self.report.database_at(revisions)
        return revisions

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
        pending = project.pending(current, run.settings.target)
        run.report.planned(pending)
        return pending
    message = (
        f"the database is at revision {', '.join(missing)}, which the script directory does not have; "
        "was the application rolled back? Set MIGRATION_ALLOW_UNKNOWN_REVISION=true to accept it"
    )
    if allow_unknown:
        get_logger().warning("revision.unknown_allowed", current=list(current), unknown=missing)
        return []
    raise UnknownRevision(message, missing)


def upgrade(run: Run) -> ExitCode:
    """Apply the pending revisions under the migration lock, surviving lost connections.

    A database already at the target returns at once, without the lock: that is
    what every init-container sees on every pod start. Otherwise the lock is
    taken, the version table read again (another runner may have migrated
    meanwhile), and the revisions still pending are applied one transaction
    each. A revision that fails with 55P03, 40P01 or 40001 is rolled back and
    retried with backoff. When a connection is lost, the runner reconnects,
    takes the lock again, reads the version table again and goes on.

    Returns:
        ``ExitCode.OK``.

    Raises:
        ConfigError, DatabaseUnavailable, LockTimeout, LockLost, MigrationFailed, UnknownRevision.
    """
    project = run.project()
    engine = database.make_engine(run.migration_url(), application_name=run.application_name)
    reconnecting = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConnectionLost),
        stop=tenacity.stop_after_attempt(MAX_RECONNECTS + 1),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
        before_sleep=_log_retry(run, "database.reconnecting", "reconnect"),
        reraise=True,
    )
    for attempt in reconnecting:
        with attempt:
            _upgrade_once(run, project, engine)
    return ExitCode.OK


def _upgrade_once(run: Run, project: Project, engine: Engine) -> None:
    log = get_logger()
    settings = run.settings
    allow = settings.allow_unknown_revision
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
    ):
        current = run.read_heads(connection)
        if not _plan(run, project, current, allow_unknown=allow):
            log.info("upgrade.noop", current=list(current), target=settings.target, reason="already at target")
            return
        with locks.migration_lock(
            settings.url,
            key=run.lock_key(),
            timeout=settings.lock_timeout,
            application_name=run.application_name,
            connect_for=settings.connect_timeout,
            on_connect_retry=lambda: run.report.retried("connect"),
        ) as held:
            run.report.lock_acquired(held.wait_seconds)
            current = run.read_heads(connection)  # another runner may have migrated meanwhile
            pending = _plan(run, project, current, allow_unknown=allow)
            if not pending:
                reason = "another runner migrated while this one waited for the lock"
                log.info("upgrade.noop", current=list(current), target=settings.target, reason=reason)
                return
            log.info(
                "upgrade.started", current=list(current), target=settings.target, pending=[s.revision for s in pending]
            )
            started = time.monotonic()
            _apply(run, project, connection, held)
            log.info(
                "upgrade.finished",
                current=list(run.read_heads(connection)),
                applied=len(pending),
                duration_seconds=round(time.monotonic() - started, 6),
            )


def _apply(run: Run, project: Project, connection: Connection, held: locks.HeldLock) -> None:
    """Run the upgrade, retrying it while a revision fails with a retryable SQLSTATE."""
    log = get_logger()

    def applied(revision: Applied) -> None:
        run.report.revision_applied(revision)
        log.info(
            "revision.applied",
            revision=revision.revision,
            message=revision.message,
            duration_seconds=round(revision.duration_seconds, 6),
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_worth_retrying),
        stop=tenacity.stop_after_attempt(run.settings.revision_retries + 1),
        wait=tenacity.wait_random_exponential(multiplier=0.5, max=10),
        before_sleep=_log_retry(run, "revision.retrying", "revision"),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                project.upgrade(
                    connection=connection,
                    url=run.migration_url(),
                    target=run.settings.target,
                    version_table=run.version_table,
                    on_applied=applied,
                    before_each=held.verify,
                )
    except MigrationFailed as error:
        if _worth_retrying(error):  # the retries are used up
            error.message += (
                f" (gave up after {run.settings.revision_retries + 1} attempts: something holds a conflicting lock; "
                "find it, or raise MIGRATION_DDL_LOCK_TIMEOUT or MIGRATION_REVISION_RETRIES)"
            )
        raise


def _worth_retrying(error: BaseException) -> bool:
    """A revision rolled back on a lock timeout, deadlock or serialization failure.

    Never one that ran outside a transaction, and never SQLSTATE classes 22, 23
    or 42 (data, constraint, syntax): those fail the same way every time.
    """
    return isinstance(error, MigrationFailed) and error.transactional and error.sqlstate in RETRYABLE_SQLSTATES


def _log_retry(run: Run, event: str, reason: str) -> Callable[[tenacity.RetryCallState], None]:
    def log(state: tenacity.RetryCallState) -> None:
        run.report.retried(reason)
        error = state.outcome.exception() if state.outcome else None
        details: dict[str, Any] = {}
        if isinstance(error, MigrationFailed):
            details = {"revision": error.revision, "sqlstate": error.sqlstate}
        get_logger().warning(
            event,
            attempt=state.attempt_number,
            delay_seconds=round(state.upcoming_sleep, 3),
            error=getattr(error, "message", str(error)),
            **details,
        )

    return log


def check(run: Run) -> ExitCode:
    """Compare the database with the target, read-only and without the lock.

    Returns:
        ``ExitCode.OK`` at (or past) the target, ``ExitCode.NOT_AT_TARGET`` with
        the pending revisions logged otherwise.

    """
    project = run.project()
    engine = database.make_engine(run.settings.url, application_name=run.application_name)
    with run.connect(engine) as connection:
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
    """Print the database's revisions, the heads and what is pending (or, with ``--output json``, the result)."""
    project = run.project()
    engine = database.make_engine(run.settings.url, application_name=run.application_name)
    with run.connect(engine) as connection:
        revisions = run.read_heads(connection)
    unknown = project.unknown(revisions)
    pending = [] if unknown else _plan(run, project, revisions, allow_unknown=False)
    if run.settings.output == "text":
        print(f"current: {' '.join(revisions) or '(empty)'}")
        print(f"heads:   {' '.join(run.report.heads)}")
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
    state: dict[str, Any] = {}

    def at_target() -> bool:
        state.clear()
        try:
            with run.connect(engine, retry=False) as connection, database.losing_connection_raises():
                revisions = run.read_heads(connection)
        except DatabaseUnavailable as error:
            state["error"] = error.message
            return False
        pending = _plan(run, project, revisions, allow_unknown=settings.allow_unknown_revision)
        state.update(current=list(revisions), pending=[s.revision for s in pending])
        return not pending

    def report(waited: float) -> None:
        log.info("wait.waiting", waited_seconds=round(waited, 3), target=settings.target, **state)

    waited = polling.poll(
        at_target, timeout=settings.wait_timeout, report=report, first_delay=_WAIT_FIRST_DELAY_SECONDS
    )
    if waited is None:
        raise WaitTimeout(
            f"database not at {settings.target} after {settings.wait_timeout:g} s ({json.dumps(state)}); "
            "is the migration Job running? Raise MIGRATION_WAIT_TIMEOUT if it needs longer"
        )
    log.info("wait.finished", current=state["current"], waited_seconds=round(waited, 3))
    return ExitCode.OK


def show_config(run: Run) -> ExitCode:
    """Print the effective settings as JSON; the database password is redacted."""
    json.dump(run.settings.redacted(), sys.stdout, indent=2)
    print()
    return ExitCode.OK
