"""The commands a run executes, from ``upgrade`` to ``config``.

``upgrade``, ``downgrade``, ``plan``, ``check``, ``current``, ``wait``,
``resolve``, ``accept``, ``history`` and ``config``.

Each takes a :class:`Run` and returns an exit code, or raises one of the errors
in :mod:`runner.errors`; :mod:`runner.cli` turns those into exit codes.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tenacity
from sqlalchemy.engine import URL, Connection, Engine

from runner import __version__, checksum, database, drift, drivers, ledger, locks, logs, noop, polling, sessions
from runner.drivers import Applied, Driver, Step, VersionTable
from runner.errors import (
    BrokenProject,
    ConfigError,
    ConnectionLost,
    DatabaseUnavailable,
    ExitCode,
    InterruptedRevision,
    MigrationFailed,
    ReadOnlyDatabase,
    RevisionDrifted,
    Stopped,
    UnknownRevision,
    VersionTableRewound,
    WaitTimeout,
)
from runner.logs import get_logger
from runner.report import RunReport
from runner.settings import Settings

MAX_RECONNECTS = 10
# Lock not available, deadlock detected, serialization failure (PostgreSQL docs, "Appendix A").
RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01", "40001"})
_WAIT_FIRST_DELAY_SECONDS = 0.1
# How often, at most, the lock is verified between revisions (seconds).
LOCK_CHECK_INTERVAL_SECONDS = 1.0


@dataclass
class Run:
    """What one invocation knows before it touches the database.

    Attributes:
        settings: the validated settings.
        cwd: the working directory (alembic.ini and relative paths).
        run_id: a random id, in every log event and in ``application_name``.
        report: the record of the run; also feeds the metrics.
        stdout: where a command's document goes (the real stdout, even when
            ``sys.stdout`` has been pointed at stderr).
        resolution: ``resolve``'s ``--mark``: ``applied`` or ``not-applied``.
        trace: ``plan --trace``.
        preloaded: the project, if the no-op check loaded it already.
    """

    settings: Settings
    cwd: Path
    report: RunReport
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    resolution: str | None = None
    trace: bool = False
    preloaded: Driver | None = None
    _driver: Driver | None = field(default=None, init=False, repr=False)
    _before_apply_ran: bool = field(default=False, init=False, repr=False)

    @property
    def host(self) -> str:
        """The pod's name (Downward API) or else this host's name."""
        return self.settings.pod_name or socket.gethostname()

    @property
    def application_name(self) -> str:
        """How this runner's connections appear in ``pg_stat_activity``: namespace/pod and run id."""
        return noop.application_name(host=self.host, namespace=self.settings.pod_namespace, run_id=self.run_id)

    def connect(self, engine: Engine, *, retry: bool = True) -> contextlib.AbstractContextManager[Connection]:
        """Open a connection, retried for ``MIGRATION_CONNECT_TIMEOUT`` seconds unless ``retry`` is False."""
        return database.connect(
            engine,
            retry_for=self.settings.connect_timeout if retry else 0.0,
            on_retry=lambda: self.report.retried("connect"),
        )

    def engine(self, url: URL) -> Engine:
        """An engine for ``url`` named as this run, each connection attempt bounded by ``MIGRATION_CONNECT_TIMEOUT``."""
        return database.make_engine(
            url,
            application_name=self.application_name,
            attempt_timeout=database.attempt_seconds(self.settings.connect_timeout),
        )

    def migration_url(self) -> URL:
        """The database URL with each revision's session timeouts and TCP bounds, so env.py's own engine has them."""
        url = database.with_network_bounds(self.settings.url)
        lock_ms = sessions.milliseconds(self.settings.ddl_lock_timeout)
        if database.family(url) == "postgresql":
            statement_ms = sessions.milliseconds(self.settings.statement_timeout)
            # Asynchronous commits: a revision's commit does not wait for its WAL flush; one
            # synchronous commit after the last revision makes them all durable (Ledger.make_durable).
            return database.with_session_settings(
                url,
                {"lock_timeout": str(lock_ms), "statement_timeout": str(statement_ms), "synchronous_commit": "off"},
            )
        if database.family(url) == "mysql" and lock_ms:
            return database.with_session_settings(
                url, {"lock_wait_timeout": str(sessions.whole_seconds(lock_ms / 1000))}
            )
        return url

    @property
    def version_table(self) -> VersionTable:
        """Where the project's tool records what is applied."""
        return self.project().version_table

    def project(self) -> Driver:
        """Load the project with its driver and validate the target against it; later calls reuse it.

        A project that configures its own database (Django's ``DATABASES``) gives
        the URL here, unless the settings name one; its secrets are redacted from
        then on.

        Raises:
            ConfigError: the project or the target is unusable.

        """
        if self._driver is not None:
            return self._driver
        project = self.preloaded or drivers.load(self.settings.chosen_tool, settings=self.settings, cwd=self.cwd)
        self._driver = project
        if self.report.direction == "up":  # a downgrade's target is resolved against the database
            self.report.target = list(project.target_revisions(self.settings.target))
        self.report.heads = list(project.heads())
        return project

    def read_current(self, connection: Connection) -> tuple[str, ...]:
        """The database's current revisions (Django: every applied migration)."""
        project = self.project()
        revisions = project.read_applied(connection, self.version_table)
        self.report.database_at(project.summary(revisions))
        return revisions

    def shown(self, current: Sequence[str]) -> list[str]:
        """``current`` as logs show it (Django: the last applied migration per app)."""
        return list(self.project().summary(current))

    def lock_key(self, connection: Connection) -> int:
        """The advisory lock key: ``MIGRATION_LOCK_KEY``, or one derived from what the server reports.

        The database name comes from the server (:func:`database.server_database_name`),
        so two URL forms of one database share one key. The schema is the
        configured one, as in every earlier version: for a database reached the
        usual way the key is byte-for-byte the one older runners derive, so
        both exclude each other during a rolling upgrade.
        """
        if self.settings.lock_key is not None:
            return locks.parse_key(self.settings.lock_key)
        return locks.derive_key(
            database_name=database.server_database_name(connection),
            schema=self.version_table.schema,
            version_table=self.version_table.name,
        )

    def ledger(self) -> ledger.Ledger:
        """The ledger of this run's database (``MIGRATION_HISTORY_TABLE``, in the version table's schema)."""
        settings = self.settings
        return ledger.Ledger(
            table=ledger.history_table(settings.history_table, self.version_table.schema),
            family=database.family(settings.url),
            tool=self.project().tool,
            scope=ledger.scope_of(self.version_table.name, self.version_table.schema),
            run_id=self.run_id,
            host=self.host,
            namespace=settings.pod_namespace,
            node=settings.node_name,
            version=__version__,
            direction=self.report.direction,
        )


def _describe(steps: Sequence[Step]) -> list[dict[str, str]]:
    return [{"revision": s.revision, "message": s.message} for s in steps]


def _plan(
    run: Run, project: Driver, current: Sequence[str], *, allow_unknown: bool, upgrading: bool = False
) -> list[Step]:
    """The pending revisions, or none when the database is at a revision we lack and that is allowed.

    Args:
        run: this run.
        project: the loaded project.
        current: the database's revisions.
        allow_unknown: ``MIGRATION_ALLOW_UNKNOWN_REVISION`` applies (upgrade, wait).
        upgrading: for ``upgrade``, a database newer than the target is an error;
            ``check`` and ``wait`` accept "at or past the target" (a rolled-back
            application must still start).

    Raises:
        UnknownRevision: the database has revisions the script directory lacks.
        ConfigError: ``upgrading`` and the target is older than the database.

    """
    missing = project.unknown(current)
    if not missing:
        target = run.settings.target
        if not upgrading and project.is_relative(target):
            raise ConfigError(f"MIGRATION_TARGET={target!r}: a relative target applies to upgrade only")
        if upgrading and project.past_target(current, target):
            raise ConfigError(
                f"the database is at {', '.join(run.shown(current))}, newer than the target {target!r}; "
                "upgrade does not downgrade: set MIGRATION_TARGET to a newer revision or to heads"
            )
        pending = project.pending(current, target)
        run.report.planned(pending)
        return pending
    message = (
        f"the database is at revision {', '.join(missing)}, which the script directory does not have; "
        "was the application rolled back? Set MIGRATION_ALLOW_UNKNOWN_REVISION=true to accept it"
    )
    if allow_unknown:
        get_logger().warning("revision.unknown_allowed", current=run.shown(current), unknown=missing)
        return []
    raise UnknownRevision(message, missing)


def upgrade(run: Run) -> ExitCode:
    """Apply the pending revisions under the migration lock, surviving lost connections.

    First the applied revisions' files are compared with the checksums the
    ledger recorded (``MIGRATION_DRIFT``). A database already at the target
    returns at once, without the lock: that is what every init-container sees on
    every pod start; unless the ledger lacks some applied revisions (they are
    adopted under the lock) or shows an unfinished step. Otherwise the lock is
    taken, the version table read again (another runner may have migrated
    meanwhile), and the revisions still pending are applied one transaction
    each. A revision that fails with 55P03, 40P01 or 40001 is rolled back and
    retried with backoff. When a connection is lost, the runner reconnects,
    takes the lock again, reads the version table again and goes on.

    Returns:
        ``ExitCode.OK``.

    Raises:
        ConfigError, DatabaseUnavailable, LockTimeout, LockLost, MigrationFailed, UnknownRevision,
        RevisionDrifted (``MIGRATION_DRIFT=fail``).
    """
    project = run.project()
    engine = run.engine(run.migration_url())
    for attempt in _reconnecting(run):
        with attempt:
            _upgrade_once(run, project, engine)
    return ExitCode.OK


def _reconnecting(run: Run) -> tenacity.Retrying:
    """Runs the work again after a lost connection (the lock, the re-read and all), with backoff."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(ConnectionLost),
        stop=tenacity.stop_after_attempt(MAX_RECONNECTS + 1),
        wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
        before_sleep=_log_retry(run, "database.reconnecting", "reconnect"),
        reraise=True,
    )


@contextlib.contextmanager
def _migration_lock(run: Run, connection: Connection) -> Iterator[locks.HeldLock]:
    """The migration lock of ``connection``'s database, after checking that the server takes writes.

    Raises:
        ReadOnlyDatabase: a hot standby, or ``default_transaction_read_only``.
        LockTimeout, LockLost: from :func:`runner.locks.migration_lock`.
    """
    settings = run.settings
    read_only = database.read_only_reason(connection)
    if read_only:
        raise ReadOnlyDatabase(
            f"{database.redact(settings.url)} reaches a read-only server: {read_only}; "
            "point MIGRATION_DATABASE_URL at the primary (during a failover, retrying finds the new one)"
        )
    with locks.migration_lock(
        settings.url,
        key=run.lock_key(connection),
        timeout=settings.lock_timeout,
        application_name=run.application_name,
        connect_for=settings.connect_timeout,
        on_connect_retry=lambda: run.report.retried("connect"),
    ) as held:
        run.report.lock_acquired(held.wait_seconds)
        yield held


def _upgrade_once(run: Run, project: Driver, engine: Engine) -> None:
    log = get_logger()
    settings = run.settings
    allow = settings.allow_unknown_revision
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
    ):
        current = run.read_current(connection)
        pending = _plan(run, project, current, allow_unknown=allow, upgrading=True)
        view = _read_ledger(run, project, connection, current)
        _judge_drift(run, view)
        if not pending and not _ledger_work(run, view, connection):
            log.info("upgrade.noop", current=run.shown(current), target=settings.target, reason="already at target")
            return
        with _migration_lock(run, connection) as held:
            current = run.read_current(connection)  # another runner may have migrated meanwhile
            pending = _plan(run, project, current, allow_unknown=allow, upgrading=True)
            if not pending and not view.needs_lock:
                # Followers pass the lock on one by one: this path stays short (no ledger work).
                reason = "another runner migrated while this one waited for the lock"
                log.info("upgrade.noop", current=run.shown(current), target=settings.target, reason=reason)
                return
            book = run.ledger()
            book.prepare(held.connection or connection)
            _adopt(project, book, current)
            _refuse_unfinished(project, book, current)
            # Under the lock: the version table and the ledger are read with no runner writing either.
            _refuse_rewound(run, connection, current, _rewound(run, project, connection, current))
            if not pending:
                log.info("upgrade.noop", current=run.shown(current), target=settings.target, reason="already at target")
                return
            _before_apply(run, project, held, current, pending)
            log.info(
                "upgrade.started",
                current=run.shown(current),
                target=settings.target,
                pending=[s.revision for s in pending],
            )
            started = time.monotonic()
            # A relative target (+2) is fixed now, so a retry after revision 1 does not go 2 further.
            target = pending[-1].revision if project.is_relative(settings.target) else settings.target
            _apply(run, project, connection, held, book, target=target)
            after = run.read_current(connection)
            still_pending = [s for s in pending if not project.is_applied(after, s.revision)]
            if still_pending:
                raise BrokenProject(project.returned_early([s.revision for s in still_pending], "pending"))
            log.info(
                "upgrade.finished",
                current=run.shown(after),
                applied=len(pending),
                duration_seconds=round(time.monotonic() - started, 6),
            )


@dataclass(frozen=True)
class _LedgerView:
    """What the ledger says, read before the lock.

    Attributes:
        drifted: applied revisions whose file changed (empty with ``MIGRATION_DRIFT=off``).
        unrecorded: applied revisions the ledger has no checksum for, to adopt.
        unfinished: a row blocks the next run (:meth:`runner.ledger.Ledger.unfinished`).
    """

    drifted: list[drift.Drift]
    unrecorded: list[str]
    unfinished: bool

    @property
    def needs_lock(self) -> bool:
        """Something must be written (adoption) or refused (an unfinished step) under the lock."""
        return bool(self.unrecorded or self.unfinished)


def _sources(project: Driver, current: Sequence[str]) -> dict[str, Path]:
    """Each applied revision's file."""
    return {r: path for r in project.applied_revisions(current) if (path := project.source(r)) is not None}


def _read_ledger(run: Run, project: Driver, connection: Connection, current: Sequence[str]) -> _LedgerView:
    """Compare the applied revisions' files with the ledger, read-only (:mod:`runner.drift`)."""
    rows = run.ledger().recording_rows(connection)
    sources = _sources(project, current)
    comparison = drift.compare(drift.recorded(rows), sources, checksums=run.settings.drift != "off")
    return _LedgerView(comparison.drifted, comparison.unrecorded, drift.any_unfinished(rows))


def _rewound(run: Run, project: Driver, connection: Connection, current: Sequence[str]) -> list[str]:
    """The project's revisions the ledger records as applied and the version table lacks, in ledger order.

    A revision whose file is no longer shipped is left out: the version table cannot hold what the
    project does not know (an unknown revision has its own refusal, 66).
    """
    recorded = drift.recorded(run.ledger().recording_rows(connection))
    return [r for r in recorded if not project.unknown([r]) and not project.is_applied(current, r)]


def _refuse_rewound(run: Run, connection: Connection, current: Sequence[str], rewound: Sequence[str]) -> None:
    """Stop before anything runs when the version table lost revisions the ledger records as applied.

    Raises:
        VersionTableRewound: naming the last recorded revision, when and where it was applied, and the ways out.
    """
    if not rewound:
        return
    rows = run.ledger().history(connection)
    last = next((row for row in rows if row.get("revision") in rewound and row.get("direction") == "up"), {})
    revision = last.get("revision", rewound[-1])
    where = f" at {last['started_at']} (run {last.get('run_id')} on {last.get('host')})" if last else ""
    shown = " ".join(run.shown(current)) or "empty"
    raise VersionTableRewound(
        f"the version table is {'empty' if not current else f'at {shown}'}, but the ledger records "
        f"{len(rewound)} later revision{'s' if len(rewound) > 1 else ''} as applied, the last {revision}{where}; "
        "upgrading would run them again. Restore the version table (`alembic stamp` / the tool's stamp, or "
        f"`migration-runner resolve --mark applied` to stamp {revision}), or, if their changes are gone, "
        "run `migration-runner resolve --mark not-applied` so that the next upgrade runs them again",
        revisions=list(rewound),
    )


def _ledger_work(run: Run, view: _LedgerView, connection: Connection) -> bool:
    """Whether a database at the target still needs the lock: to adopt revisions, or to refuse an unfinished one.

    Adoption alone is skipped on a read-only server (a standby has the primary's
    ledger, or gets it once the primary's runner adopts).
    """
    if view.unfinished:
        return True
    if view.unrecorded and database.read_only_reason(connection):
        get_logger().info("ledger.adoption_skipped", unrecorded=len(view.unrecorded), reason="read-only server")
        return False
    return bool(view.unrecorded)


def _judge_drift(run: Run, view: _LedgerView) -> None:
    """Log each drifted revision (``revision.drifted``), put them in the result, and refuse on ``fail``.

    Raises:
        RevisionDrifted: ``MIGRATION_DRIFT=fail`` and something drifted; nothing was done.
    """
    if run.settings.drift == "off" or run.report.drift is not None:  # off, or judged before a reconnect
        return
    log = get_logger()
    for found in view.drifted:
        log.warning(
            "revision.drifted",
            revision=found.revision,
            file=str(found.path),
            recorded_checksum=found.recorded,
            current_checksum=found.current,
            recorded_at=found.recorded_at,
            recorded_by_run=found.run_id,
        )
    run.report.drift_compared([found.document() for found in view.drifted])
    if view.drifted and run.settings.drift == "fail":
        names = [found.revision for found in view.drifted]
        raise RevisionDrifted(
            f"{', '.join(names)}: changed since {'it was' if len(names) == 1 else 'they were'} applied "
            "(another checksum than the ledger recorded), and MIGRATION_DRIFT=fail; nothing was done. "
            "Restore the file, or review the change and run `migration-runner accept REVISION`",
            revisions=names,
        )


def _adopt(project: Driver, book: ledger.Ledger, current: Sequence[str]) -> None:
    """Record the applied revisions the ledger has no checksum for as ``adopted``, under the lock.

    They were applied before the ledger recorded checksums, or by another tool
    (``alembic upgrade``, ``manage.py migrate``): their files now are taken as
    what ran, and are compared from then on.
    """
    sources = _sources(project, current)
    unrecorded = drift.compare(drift.recorded(book.recording_rows()), sources, checksums=False).unrecorded
    entries = [(revision, *found) for revision in unrecorded if (found := checksum.fingerprint(sources[revision]))]
    if entries:
        book.record(entries, "adopted")
        get_logger().info(
            "ledger.adopted",
            count=len(entries),
            revisions=[entry[0] for entry in entries],
            reason="applied before the ledger recorded checksums, or by another tool",
        )


def _before_apply(
    run: Run, project: Driver, held: locks.HeldLock, current: Sequence[str], pending: Sequence[Step]
) -> None:
    """Run ``MIGRATION_BEFORE_APPLY_COMMAND``, if set, once per run: under the lock, before the first revision.

    Raises:
        BeforeApplyFailed: it failed; nothing was applied (exit 75).
        ConfigError: it cannot be started.
    """
    argv = run.settings.before_apply_command
    if not argv or run._before_apply_ran:  # a reconnect starts the upgrade again: the backup is taken
        return
    run._before_apply_ran = True
    from runner import before_apply  # noqa: PLC0415  (only when configured)

    context = before_apply.Context(
        run_id=run.run_id,
        environment=run.settings.environment,
        tool=project.tool,
        direction=run.report.direction,
        current=run.shown(current),
        target=run.report.target,
        pending=[step.revision for step in pending],
    )
    before_apply.run(
        argv,
        timeout=run.settings.before_apply_timeout,
        env=before_apply.environment_for(context, run.settings.light_url, os.environ),
        verify_lock=held.verify,
        verify_every=LOCK_CHECK_INTERVAL_SECONDS,
    )


def downgrade(run: Run) -> ExitCode:
    """Revert applied revisions down to ``MIGRATION_TARGET``, under the migration lock, one transaction each.

    Explicit and guarded: the target is required (there is no default),
    ``production`` needs ``MIGRATION_ALLOW_DOWNGRADE=true``, and the whole path
    is checked for steps that cannot be reverted before anything changes.
    Otherwise as :func:`upgrade`: the lock, the re-read under it, the ledger,
    retries and reconnects; a failure half-way leaves the database at the last
    fully reverted revision.

    Returns:
        ``ExitCode.OK``, also when the database is already at the target.

    Raises:
        ConfigError, DatabaseUnavailable, LockTimeout, LockLost, MigrationFailed, UnknownRevision, BeforeApplyFailed.
    """
    settings = run.settings
    if "target" not in settings.model_fields_set:
        raise ConfigError(
            "downgrade needs a target, and has no default: --target or MIGRATION_TARGET (Alembic: a revision id, "
            "-N or base; Django: app_label:migration_name or app_label:zero); nothing was reverted"
        )
    if settings.environment == "production" and not settings.allow_downgrade:
        raise ConfigError(
            "downgrade is refused in production unless MIGRATION_ALLOW_DOWNGRADE=true: when one is really needed, "
            "run it as a Job of its own with that setting (README, 'Rolling back'); nothing was reverted"
        )
    project = run.project()
    engine = run.engine(run.migration_url())
    target = [settings.target]  # a relative target (-1) is fixed once planned: a reconnect must not go further
    for attempt in _reconnecting(run):
        with attempt:
            _downgrade_once(run, project, engine, target)
    return ExitCode.OK


def _downgrade_once(run: Run, project: Driver, engine: Engine, target: list[str]) -> None:
    log = get_logger()
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
    ):
        current = run.read_current(connection)
        if not _reverting(run, project, current, target):
            log.info("downgrade.noop", current=run.shown(current), target=target[0], reason="already at target")
            return
        with _migration_lock(run, connection) as held:
            current = run.read_current(connection)  # another runner may have reverted meanwhile
            steps = _reverting(run, project, current, target)
            if not steps:
                reason = "another runner reverted while this one waited for the lock"
                log.info("downgrade.noop", current=run.shown(current), target=target[0], reason=reason)
                return
            book = run.ledger()
            book.prepare(held.connection or connection)
            _refuse_unfinished(project, book, current)
            _before_apply(run, project, held, current, steps)
            log.info(
                "downgrade.started",
                current=run.shown(current),
                target=target[0],
                reverting=[s.revision for s in steps],
            )
            started = time.monotonic()
            _apply(run, project, connection, held, book, target=target[0])
            after = run.read_current(connection)
            still_applied = [s.revision for s in steps if project.is_applied(after, s.revision)]
            if still_applied:
                raise BrokenProject(project.returned_early(still_applied, "applied"))
            log.info(
                "downgrade.finished",
                current=run.shown(after),
                reverted=len(steps),
                duration_seconds=round(time.monotonic() - started, 6),
            )


def _reverting(run: Run, project: Driver, current: Sequence[str], target: list[str]) -> list[Step]:
    """The steps down to ``target[0]``, checked for irreversible ones; a relative target is fixed here.

    Raises:
        UnknownRevision: the database is at a revision the project lacks (only its own image can revert it).
        ConfigError: a bad target, or a step on the way that cannot be reverted (nothing is done).
    """
    missing = project.unknown(current)
    if missing:
        raise UnknownRevision(
            f"the database is at revision {', '.join(missing)}, which the script directory does not have: "
            "only an image that has it can revert it",
            missing,
        )
    steps = project.reverting(current, target[0])
    blocked = project.irreversible(steps)
    if blocked:
        named = "; ".join(f"{revision} ({why})" for revision, why in blocked)
        raise ConfigError(
            f"downgrade to {target[0]!r} would revert {named}, which cannot be reverted; "
            "nothing was reverted: choose a target above it"
        )
    reverted = {s.revision for s in steps}
    ending = (set(current) - reverted) | {r for s in steps for r in s.parents if r not in reverted}
    run.report.planned(steps)
    run.report.target = sorted(project.summary(sorted(ending)))
    if steps and target[0].startswith("-"):  # Alembic's -N: from now on, where it ends
        target[0] = sorted(ending)[0] if len(ending) == 1 else "base" if not ending else target[0]
    return steps


def _refuse_unfinished(project: Driver, book: ledger.Ledger, current: Sequence[str]) -> None:
    """Stop before running anything while the ledger shows a revision that may be partly applied or reverted.

    A row the version table already agrees with counts as resolved ``applied``:
    for an upgrade step, the table records the revision (someone ran ``alembic
    stamp``); for a downgrade step, it no longer does.

    Raises:
        InterruptedRevision: the oldest such revision, with the way out.
    """
    for row in book.unfinished():
        if _version_table_agrees(project, current, row):
            book.resolve(row.row_id, "applied")
            get_logger().warning("ledger.resolved", revision=row.revision, resolution="applied", reason="stamped")
            continue
        raise _interrupted(book, row)


def _version_table_agrees(project: Driver, current: Sequence[str], row: ledger.Unfinished) -> bool:
    """The version table already says the step finished: it records the revision (up), or no longer does (down)."""
    return project.is_applied(current, row.revision) == (row.direction != "down")


def _interrupted(book: ledger.Ledger, row: ledger.Unfinished) -> InterruptedRevision:
    """The error for a step the ledger shows unfinished: when, where, and the two ways out."""
    up = row.direction != "down"
    how = "was interrupted" if row.outcome in ("started", "interrupted") else "failed"
    why = "MySQL cannot roll back DDL" if book.family == "mysql" else "it committed part of its work on its own"
    what = f"revision {row.revision}" if up else f"the downgrade of revision {row.revision}"
    done, undone = ("its changes are all there", "undo them") if up else ("it is fully reverted", "restore them")
    return InterruptedRevision(
        f"{what} {how} at {row.started_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(run {row.run_id} on {row.host}); it ran outside a transaction ({why}), "
        f"so it may be partly {'applied' if up else 'reverted'}. Inspect the schema, then run "
        f"`migration-runner resolve --mark applied` if {done}, or {undone} and run "
        "`migration-runner resolve --mark not-applied` so that the next run does it again",
        revision=row.revision,
    )


def _unfinished_step(run: Run, project: Driver, connection: Connection, current: Sequence[str]) -> str | None:
    """For the read-only commands: a step the ledger shows unfinished, as ``upgrade`` would refuse it.

    Read-only: a row the version table agrees with is left for ``upgrade`` to
    mark resolved.

    Returns:
        ``None`` when no row blocks; the revision when one does while the
        migration lock is held (a runner is at work on it: not done yet).

    Raises:
        InterruptedRevision: a row blocks and no runner holds the lock.
    """
    book = run.ledger()
    for row in book.unfinished(connection):
        if _version_table_agrees(project, current, row):
            continue
        if locks.held_by_anyone(connection, run.settings.url, key=run.lock_key(connection)):
            return row.revision
        raise _interrupted(book, row)
    return None


def _apply(
    run: Run,
    project: Driver,
    connection: Connection,
    held: locks.HeldLock,
    book: ledger.Ledger,
    *,
    target: str,
    direction: str | None = None,
) -> None:
    """Run the upgrade (or downgrade: ``direction``, default the run's) to ``target``; retry retryable SQLSTATEs."""
    log = get_logger()
    upgrading = (direction or run.report.direction) == "up"
    migrate = project.upgrade if upgrading else project.downgrade

    def applied(revision: Applied) -> None:
        run.report.revision_applied(revision)
        log.info(
            "revision.applied" if upgrading else "revision.reverted",
            revision=revision.revision,
            message=revision.message,
            duration_seconds=round(revision.duration_seconds, 6),
        )

    verified = [-LOCK_CHECK_INTERVAL_SECONDS]  # the first revision always asks (behind a pooler, this fails)

    def before_each(revision: str) -> None:
        # A lost lock session is noticed by its keepalives only after tens of seconds anyway, so
        # asking the server once a second, not before every revision, loses no protection.
        if time.monotonic() - verified[0] >= LOCK_CHECK_INTERVAL_SECONDS:
            held.verify()
            verified[0] = time.monotonic()
        found = checksum.fingerprint(project.source(revision))
        if found:
            book.checksums[revision] = found
        book.starting(revision, commits_as_it_goes=project.commits_as_it_goes(revision))

    def in_transaction(execute: drivers.Execute, revision: str, transactional: bool) -> None:
        book.applied(execute, revision, transactional=transactional)

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
                migrate(
                    drivers.MigrateOptions(
                        connection=connection,
                        url=run.migration_url(),
                        target=target,
                        version_table=run.version_table,
                        on_applied=applied,
                        before_each=before_each,
                        in_transaction=in_transaction,
                    )
                )
    except MigrationFailed as error:
        if _worth_retrying(error):  # the retries are used up
            error.message += (
                f" (gave up after {run.settings.revision_retries + 1} attempts: something holds a conflicting lock; "
                "find it, or raise MIGRATION_DDL_LOCK_TIMEOUT or MIGRATION_REVISION_RETRIES)"
            )
        if error.revision is not None:
            _record_end(book, error.revision, "failed", transactional=error.transactional, message=error.message)
        # What was applied before it is on disk before the run reports it; best effort: a lost
        # server has lost only whole revisions at the end, which the next run applies again.
        with contextlib.suppress(Exception):
            book.make_durable()
        raise
    except Stopped as stopped:  # no durability wait: the grace period is for rollback and the lock
        if stopped.revision is not None:
            held.cancel_running()  # MySQL: the statement must be gone before the row says so
            _record_end(
                book, stopped.revision, "interrupted", transactional=stopped.transactional, message=str(stopped)
            )
        raise
    # What was applied is on disk before the run says so (exit 0 promises it).
    with database.losing_connection_raises():
        book.make_durable()


def _record_end(book: ledger.Ledger, revision: str, outcome: str, *, transactional: bool, message: str) -> None:
    """Write the ledger row of a revision that did not finish; best effort (the run's error matters more)."""
    try:
        book.ended(revision, outcome, transactional=transactional, error=logs.redact_text(message))
    except Exception as error:
        get_logger().warning("ledger.write_failed", revision=revision, error=database.error_message(error))


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
    """Compare the database with the target, and the applied revisions' files with the ledger; read-only, no lock.

    Returns:
        ``ExitCode.OK`` at (or past) the target, ``ExitCode.NOT_AT_TARGET`` with
        the pending revisions logged otherwise.

    Raises:
        RevisionDrifted: ``MIGRATION_DRIFT=fail`` and an applied revision's file changed.
        ConfigError, DatabaseUnavailable, UnknownRevision.
    """
    project = run.project()
    engine = run.engine(run.settings.url)
    with run.connect(engine) as connection:
        current = run.read_current(connection)
        pending = _plan(run, project, current, allow_unknown=False)
        in_progress = _unfinished_step(run, project, connection, current)
        if run.settings.drift != "off":
            _judge_drift(run, _read_ledger(run, project, connection, current))
    if in_progress is not None:
        get_logger().warning(
            "check.pending", current=run.shown(current), target=run.settings.target, in_progress=in_progress
        )
        return ExitCode.NOT_AT_TARGET
    if pending:
        get_logger().warning(
            "check.pending", current=run.shown(current), target=run.settings.target, pending=_describe(pending)
        )
        return ExitCode.NOT_AT_TARGET
    get_logger().info("check.ok", current=run.shown(current), target=run.settings.target)
    return ExitCode.OK


def plan(run: Run) -> ExitCode:
    """Show what an upgrade to the target would do, read-only and without the lock: steps, SQL, flags.

    Prints the plan on stdout as text, JSON (``docs/plan.schema.json``) or
    Markdown (a pull-request comment), by ``MIGRATION_OUTPUT``.

    Returns:
        ``ExitCode.OK`` when nothing is pending, ``ExitCode.NOT_AT_TARGET`` when something is (as ``check``).

    Raises:
        ConfigError, DatabaseUnavailable, UnknownRevision.
    """
    from runner import plan as planning  # noqa: PLC0415

    settings = run.settings
    project = run.project()
    engine = run.engine(settings.url)
    with run.connect(engine) as connection:
        current = run.read_current(connection)
        pending = _plan(run, project, current, allow_unknown=False, upgrading=True)
        existing = database.table_names(connection, run.version_table.schema) if pending else set()
    traced = _rehearse(run, project) if pending and run.trace else None
    rendered = {r.revision: r for r in project.render(current, settings.target, settings.url)} if pending else {}
    irreversible = dict(project.irreversible(pending))
    tool_tables = (run.version_table.name, settings.history_table)  # the version table is the tool's own
    steps = []
    for step in pending:
        shown = rendered.get(step.revision)
        sql = shown.sql if shown else None
        flags = planning.flags_of(sql or "", existing, family=database.family(settings.url), ignored=tool_tables)
        existing -= planning.created_tables(sql or "")  # a table an earlier step creates is new, not existing
        steps.append(
            planning.PlannedStep(
                revision=step.revision,
                message=step.message,
                transactional=shown.transactional if shown else True,
                sql=sql,
                not_rendered=shown.not_rendered if shown else "not rendered",
                irreversible=irreversible.get(step.revision),
                flags=flags,
                trace=None if traced is None else traced[0].get(step.revision, []),
                not_traced=None if traced is None else traced[1].get(step.revision),
            )
        )
    # Redacted like the logs: a revision's own error, in not_rendered, may carry the URL.
    document = logs.redact_value(
        planning.document(
            traced=traced is not None,
            tool=project.tool,
            database=settings.light_url.database_name,
            current=run.shown(current),
            target=run.report.target,
            steps=steps,
        )
    )
    if settings.output == "json":
        run.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        run.stdout.write(planning.markdown(document) if settings.output == "markdown" else planning.text(document))
    run.stdout.flush()
    get_logger().info(
        "plan.finished",
        current=run.shown(current),
        target=settings.target,
        pending=len(steps),
        flagged=sum(1 for s in steps if s.flags or s.irreversible),
    )
    return ExitCode.NOT_AT_TARGET if steps else ExitCode.OK


def _rehearse(run: Run, project: Driver) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """``plan --trace``: the pending steps run under the lock and rolled back; per step, its statements' locks.

    Returns:
        Each step's traced statements (:func:`runner.trace.report`), and why each step not run was not.

    Raises:
        ConfigError: not PostgreSQL, or production without ``MIGRATION_ALLOW_TRACE=true``.
    """
    from runner import trace  # noqa: PLC0415

    settings = run.settings
    if database.family(settings.url) != "postgresql":
        raise ConfigError(
            f"plan --trace reads pg_locks, which only PostgreSQL has; {database.family(settings.url)} cannot be "
            "traced (plan without --trace shows the SQL and its flags)"
        )
    if settings.environment == "production" and not settings.allow_trace:
        raise ConfigError(
            "plan --trace holds the locks it measures while it runs, so it is refused in production unless "
            "MIGRATION_ALLOW_TRACE=true; trace a copy of the database instead"
        )
    url = run.migration_url()
    engine = run.engine(url)
    tracer = trace.Tracer()
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
        _migration_lock(run, connection),
    ):
        skipped = project.rehearse(url=url, target=settings.target, version_table=run.version_table, tracer=tracer)
    get_logger().info("plan.traced", statements=len(tracer.statements), not_run=[step for step, _ in skipped])
    return trace.report(tracer.statements), dict(skipped)


def current(run: Run) -> ExitCode:
    """Print the database's revisions, the heads and what is pending (or, with ``--output json``, the result)."""
    project = run.project()
    engine = run.engine(run.settings.url)
    with run.connect(engine) as connection:
        revisions = run.read_current(connection)
        in_progress = _unfinished_step(run, project, connection, revisions)
    unknown = project.unknown(revisions)
    pending = [] if unknown else _plan(run, project, revisions, allow_unknown=False)
    if run.settings.output == "text":
        out = run.stdout
        print(f"current: {' '.join(run.shown(revisions)) or '(empty)'}", file=out)
        print(f"heads:   {' '.join(run.report.heads)}", file=out)
        if unknown:
            print(f"unknown: {' '.join(unknown)} (not in the script directory)", file=out)
        if in_progress is not None:
            print(f"running: {in_progress} (a runner holds the migration lock)", file=out)
        print(f"pending: {len(pending)}" + "".join(f"\n  {s.revision}  {s.message}" for s in pending), file=out)
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
    engine = run.engine(settings.url)
    state: dict[str, Any] = {}

    def at_target() -> bool:
        state.clear()
        try:
            with run.connect(engine, retry=False) as connection, database.losing_connection_raises():
                revisions = run.read_current(connection)
                in_progress = _unfinished_step(run, project, connection, revisions)
        except DatabaseUnavailable as error:
            state["error"] = error.message
            return False
        pending = _plan(run, project, revisions, allow_unknown=settings.allow_unknown_revision)
        state.update(current=run.shown(revisions), pending=[s.revision for s in pending])
        if in_progress is not None:
            state["in_progress"] = in_progress
        return not pending and in_progress is None

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


HISTORY_SCHEMA_VERSION = 1


def history(run: Run) -> ExitCode:
    """Print the ledger, newest first (``MIGRATION_TARGET`` given: that revision's rows only), read-only.

    Text by default; ``--output json``: ``{"schema_version": 1, "rows": [...]}``
    (``docs/history.schema.json``).

    Returns:
        ``ExitCode.OK``, also when there is no ledger yet.
    """
    settings = run.settings
    project = run.project()
    engine = run.engine(settings.url)
    only = settings.target if "target" in settings.model_fields_set else None
    with run.connect(engine) as connection:
        rows = logs.redact_value(run.ledger().history(connection, only))  # an error recorded by an older runner
    if settings.output == "json":
        json.dump({"schema_version": HISTORY_SCHEMA_VERSION, "tool": project.tool, "rows": rows}, run.stdout, indent=2)
        print(file=run.stdout)
        return ExitCode.OK
    out = run.stdout
    if not rows:
        print(f"no ledger rows for {project.tool} in {settings.history_table}", file=out)
    for row in rows:
        duration = row.get("duration_seconds")
        took = f"{duration:.3f} s" if isinstance(duration, float) else "-"
        where = "/".join(part for part in (row.get("namespace"), row.get("host")) if part) or "-"
        print(
            f"{row['started_at']}  {row['direction']:<4} {row['outcome']:<11} {row['revision']}  {took}  "
            f"run {row['run_id']} on {where}  checksum {(row.get('checksum') or '-')[:12]}",
            file=out,
        )
    return ExitCode.OK


def accept(run: Run) -> ExitCode:
    """Record an applied revision's file as it is now, after a reviewed edit: an ``accepted`` ledger row.

    The revision is ``MIGRATION_TARGET`` (``accept REVISION``). The row keeps
    the new checksum, and the rows before it keep the old one, so the change
    stays in ``history``; drift is compared with the new checksum from then on.

    Returns:
        ``ExitCode.OK``.

    Raises:
        ConfigError: no revision, an unknown one, one that is not applied, or one without a readable file.
        DatabaseUnavailable, LockTimeout.
    """
    settings = run.settings
    if "target" not in settings.model_fields_set:
        raise ConfigError("accept needs the revision whose file you reviewed: migration-runner accept REVISION")
    project = run.project()
    named = project.target_revisions(settings.target)
    if len(named) != 1:
        raise ConfigError(f"accept takes one revision; {settings.target!r} names {len(named)}")
    revision = named[0]
    found = checksum.fingerprint(project.source(revision))
    if found is None:
        raise ConfigError(f"revision {revision} has no Python file that can be read and parsed; nothing to accept")
    engine = run.engine(settings.url)
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
        _migration_lock(run, connection) as held,
    ):
        current = run.read_current(connection)
        if not project.is_applied(current, revision):
            raise ConfigError(f"revision {revision} is not applied here; a pending revision has nothing to accept")
        book = run.ledger()
        book.prepare(held.connection or connection)
        before = drift.recorded(book.recording_rows()).get(revision)
        book.record([(revision, *found)], "accepted")
    get_logger().warning(
        "revision.accepted",
        revision=revision,
        previous_checksum=before.checksum if before else None,
        checksum=found[0],
        changed=before is None or before.checksum != found[0],
    )
    return ExitCode.OK


def verify(run: Run) -> ExitCode:
    """The CI checks on a scratch database (:mod:`runner.verify`): one head, upgrade, models, the stairway, no trace.

    Prints the report on stdout (text, ``--output json`` or ``markdown``) and, with
    ``--junit-xml PATH``, writes it as JUnit XML.

    Returns:
        ``ExitCode.OK`` when no case failed (skipped ones do not fail), ``ExitCode.NOT_AT_TARGET`` (1) otherwise.

    Raises:
        ConfigError: the database holds tables already (unless ``--allow-nonempty``, which the
            ``production`` environment refuses).
        DatabaseUnavailable, LockTimeout.
    """
    from runner import verify as checks  # noqa: PLC0415

    settings = run.settings
    if settings.environment == "production" and settings.verify_allow_nonempty:
        raise ConfigError(
            "verify --allow-nonempty is refused in the production environment: verify reverts every revision, "
            "and a database with tables in production holds data; run it on a scratch database with "
            "MIGRATION_ENVIRONMENT=test; nothing was changed"
        )
    project = run.project()
    _check_verify_settings(project, settings.verify_heads, settings.verify_irreversible)
    url = run.migration_url()
    engine = run.engine(url)
    schema = run.version_table.schema
    ignored = (run.version_table.name, settings.history_table)
    cases: list[checks.Case] = []
    with run.connect(engine) as connection, database.losing_connection_raises():
        found = sorted(database.table_names(connection, schema) - set(ignored))
        if found and not settings.verify_allow_nonempty:
            raise ConfigError(
                f"verify needs a scratch database, and this one holds tables: {', '.join(found[:20])}; point "
                "MIGRATION_DATABASE_URL at an empty database (a CI service container), or pass --allow-nonempty; "
                "nothing was changed"
            )
        cases.append(_single_head(project, settings.verify_heads))
        with _migration_lock(run, connection) as held:
            if cases[0].status == "passed" or settings.verify_heads is not None:
                cases += _verify_steps(run, project, connection, held, url)
            else:
                for check in CHECKS_AFTER_HEADS:
                    cases.append(checks.Case(check, check))
                    cases[-1].skip("several heads: merge them first")
    code = ExitCode.NOT_AT_TARGET if any(case.status == "failed" for case in cases) else ExitCode.OK
    # Redacted like the logs: a revision's own error, in a case's message, may carry the URL.
    report = logs.redact_value(
        checks.document(tool=project.tool, database=settings.light_url.database_name, cases=cases, exit_code=code)
    )
    if settings.junit_xml is not None:
        settings.junit_xml.write_bytes(checks.junit(report))
    if settings.output == "json":
        run.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        run.stdout.write(checks.markdown(report) if settings.output == "markdown" else checks.text(report))
    run.stdout.flush()
    get_logger().info("verify.finished", passed=report["passed"], failed=report["failed"], skipped=report["skipped"])
    return code


def _check_verify_settings(project: Driver, heads: Sequence[str] | None, irreversible: Sequence[str]) -> None:
    """The revisions ``MIGRATION_VERIFY_HEADS`` and ``MIGRATION_VERIFY_IRREVERSIBLE`` name exist (a typo is 78).

    Raises:
        ConfigError: an empty heads list, or a name that is no revision of the project.
    """
    if heads is not None and not heads:
        raise ConfigError("MIGRATION_VERIFY_HEADS is empty: list the heads you mean to have, or unset it")
    known = {step.revision for step in project.pending((), "heads")}
    for name, values in (("MIGRATION_VERIFY_HEADS", heads or ()), ("MIGRATION_VERIFY_IRREVERSIBLE", irreversible)):
        unknown = [value for value in values if value not in known]
        if unknown:
            example = min(known, default="none")
            raise ConfigError(
                f"{name} names {', '.join(unknown)}, which this project has no revision of "
                f"(they are written like {example}); nothing was changed"
            )


CHECKS_AFTER_HEADS = ("upgrade", "models_match", "up_down_consistency", "downgrade_leaves_no_trace")


def _single_head(project: Driver, expected: Sequence[str] | None) -> Any:
    from runner import verify as checks  # noqa: PLC0415

    case = checks.Case("single_head", "single_head")
    with checks.Timer(case):
        heads = sorted(project.heads())
        diverged = project.diverged()
        if expected is not None and sorted(expected) != heads:
            case.fail(f"the heads are {', '.join(heads)}, not MIGRATION_VERIFY_HEADS={','.join(expected)}", heads)
        elif expected is None and diverged:
            case.fail(
                f"{len(diverged)} heads: {', '.join(diverged)}; run `{project.merge_command}` to join them "
                "(or list the heads you mean to have in MIGRATION_VERIFY_HEADS)",
                diverged,
            )
    return case


class _Verifier:
    """The cases of ``verify`` that change the database, run in order under one lock.

    The upgrade goes one revision at a time and keeps the schema as it was before
    each; the stairway then reverts them from the head down, comparing each
    revert with that schema, and applies them again.
    """

    def __init__(self, run: Run, project: Driver, connection: Connection, held: locks.HeldLock, url: URL) -> None:
        from runner import verify as checks  # noqa: PLC0415

        self.checks = checks
        self.run, self.project, self.connection, self.held, self.url = run, project, connection, held, url
        self.schema = run.version_table.schema
        self.ignored = (run.version_table.name, run.settings.history_table)
        self.up_book = run.ledger()
        self.up_book.prepare(held.connection or connection)
        self.down_book = run.ledger()
        self.down_book.direction = "down"
        self.down_book.prepare(held.connection or connection)
        self.before: dict[str, Any] = {}  # revision -> the schema before it was applied
        self.order: list[Step] = []
        self.reverted: list[Step] = []
        self.left_behind: list[str] = []

    def _step(self, target: str, direction: str) -> None:
        book = self.up_book if direction == "up" else self.down_book
        _apply(self.run, self.project, self.connection, self.held, book, target=target, direction=direction)

    def _up(self, revision: str) -> None:
        self._step(self.project.step_target(revision, "up"), "up")

    def _stairway_case(self, step: Step, direction: str) -> Any:
        name = f"up_down_consistency[{step.revision} {direction}]"
        return self.checks.Case("up_down_consistency", name, revision=step.revision, direction=direction)

    def _snapshot(self) -> Any:
        return self.checks.snapshot(self.connection, self.schema, self.ignored)

    def upgrade(self) -> Any:
        """``upgrade``: base (or where the database is) to the heads, one revision at a time."""
        case = self.checks.Case("upgrade", "upgrade")
        with self.checks.Timer(case):
            try:
                for step in self.project.pending(self.run.read_current(self.connection), "heads"):
                    self.before[step.revision] = self._snapshot()
                    self._up(step.revision)
                    self.order.append(step)
            except MigrationFailed as error:
                case.fail(f"revision {error.revision} failed on the way up: {error.message}")
        return case

    def models_match(self) -> Any:
        """``models_match``: the models against the migrated schema (the driver's check)."""
        case = self.checks.Case("models_match", "models_match")
        with self.checks.Timer(case):
            status, lines = self.project.models_match(self.connection, self.url, self.ignored)
            if status == "failed":
                case.fail(f"the models differ from the migrated schema; a new revision would {lines[0]}", lines)
            elif status == "skipped":
                case.skip(lines[0])
        return case

    def down(self) -> list[Any]:
        """The stairway down: each revision from the head, compared afterwards with the schema before it."""
        excepted = set(self.run.settings.verify_irreversible)
        cases = []
        for step in reversed(self.order):  # the last applied first: what depends on a step is reverted before it
            case = self._stairway_case(step, "down")
            cases.append(case)
            with self.checks.Timer(case):
                if not self._down_one(step, case, excepted):
                    break
        return cases

    def _down_one(self, step: Step, case: Any, excepted: set[str]) -> bool:
        why = dict(self.project.irreversible([step])).get(step.revision)
        if why is not None:
            if step.revision in excepted:
                case.skip(f"cannot be reverted ({why}), as MIGRATION_VERIFY_IRREVERSIBLE says")
            else:
                case.fail(
                    f"revision {step.revision} cannot be reverted ({why}); "
                    "list it in MIGRATION_VERIFY_IRREVERSIBLE if that is by design"
                )
            return False
        target = self.project.step_target(step.revision, "down")
        reverts = [s.revision for s in self.project.reverting(self.run.read_current(self.connection), target)]
        if reverts != [step.revision]:  # e.g. one side of a Django branch
            case.skip(
                f"no downgrade reverts {step.revision} alone (its target {target} reverts {', '.join(reverts)}); "
                "the stairway stops here"
            )
            return False
        try:
            self._step(target, "down")
        except MigrationFailed as error:
            case.fail(f"the downgrade of {step.revision} failed: {error.message}")
            return False
        self.reverted.append(step)
        left = self.checks.differences(self.before[step.revision], self._snapshot())
        self.left_behind += [f"{step.revision}: {line}" for line in left]
        return True

    def up_again(self) -> list[Any]:
        """The stairway up: each reverted revision applied again, base first."""
        cases = []
        for step in reversed(self.reverted):
            case = self._stairway_case(step, "up")
            cases.append(case)
            with self.checks.Timer(case):
                try:
                    self._up(step.revision)
                except MigrationFailed as error:
                    case.fail(f"the upgrade of {step.revision} after its downgrade failed: {error.message}")
                    break
        return cases

    def no_trace(self) -> Any:
        """``downgrade_leaves_no_trace``: what the stairway down found left behind (or missing)."""
        case = self.checks.Case("downgrade_leaves_no_trace", "downgrade_leaves_no_trace")
        if self.left_behind:
            revision, what = self.left_behind[0].split(": ", 1)
            case.fail(f"after the downgrade of {revision}, {what}", self.left_behind)
        elif not self.reverted:
            case.skip("no revision was downgraded")
        return case


def _verify_steps(run: Run, project: Driver, connection: Connection, held: locks.HeldLock, url: URL) -> list[Any]:
    """``upgrade``, ``models_match``, the stairway and ``downgrade_leaves_no_trace``, in that order."""
    verifier = _Verifier(run, project, connection, held, url)
    upgraded = verifier.upgrade()
    if upgraded.status == "failed":
        skipped = [verifier.checks.Case(check, check) for check in ("models_match", "downgrade_leaves_no_trace")]
        for case in skipped:
            case.skip("the upgrade failed")
        return [upgraded, *skipped]
    cases = [upgraded, verifier.models_match(), *verifier.down(), *verifier.up_again(), verifier.no_trace()]
    run.read_current(connection)
    return cases


def show_config(run: Run) -> ExitCode:
    """Print the effective settings as JSON; the database password is redacted.

    Without a URL in the settings, the project is loaded, so that one which
    configures its own database (Django's ``DATABASES``) shows it; a project
    that cannot load is shown as the URL's source.
    """
    if run.settings.database_url is None:
        try:
            run.project()
        except ConfigError as error:
            run.settings.note_database_problem(error.message)
    json.dump(logs.redact_value(run.settings.redacted()), run.stdout, indent=2)
    print(file=run.stdout)
    return ExitCode.OK


def _resolve_rewound(
    run: Run, project: Driver, connection: Connection, book: ledger.Ledger, rewound: Sequence[str]
) -> None:
    """A rewound version table: ``applied`` stamps the last recorded revision; ``not-applied`` records them undone."""
    if run.resolution == "applied":
        rows = book.history(connection)
        last = next((row["revision"] for row in rows if row["revision"] in rewound and row["direction"] == "up"), None)
        revision = last or rewound[-1]
        project.stamp(connection, revision, run.version_table)
    else:
        book.record_undone(list(rewound), resolved_by=run.host)
    run.read_current(connection)
    get_logger().info("resolve.recorded", revisions=list(rewound), resolution=run.resolution, reason="rewound")


def resolve(run: Run) -> ExitCode:
    """Record what the operator found about a revision the ledger shows as unfinished, under the lock.

    ``--mark applied``: its changes are all there; the version table is stamped
    with it (Alembic's ``MigrationContext.stamp``), or, for a downgrade step, no
    longer records it. ``--mark not-applied``: its changes were undone; the next
    run does it again.

    Returns:
        ``ExitCode.OK``, also when nothing is unfinished.

    Raises:
        ConfigError: no ``--mark``, or several unfinished revisions.
    """
    log = get_logger()
    if run.resolution not in ledger.RESOLUTIONS:
        raise ConfigError(f"resolve needs --mark {' or --mark '.join(ledger.RESOLUTIONS)}")
    project = run.project()
    engine = run.engine(run.settings.url)
    settings = run.settings
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
        _migration_lock(run, connection) as held,
    ):
        book = run.ledger()
        book.prepare(held.connection or connection)
        rows = book.unfinished()
        if not rows:
            current = run.read_current(connection)
            rewound = _rewound(run, project, connection, current)
            if rewound:
                _resolve_rewound(run, project, connection, book, rewound)
                return ExitCode.OK
            log.info("resolve.nothing", reason="no unfinished revision in the ledger")
            return ExitCode.OK
        if len(rows) > 1:
            raise ConfigError(
                f"several unfinished revisions in the ledger ({', '.join(r.revision for r in rows)}); "
                f"resolve them in {settings.history_table} by hand"
            )
        row = rows[0]
        if run.resolution == "applied" and row.direction == "down":
            project.unstamp(connection, row.revision, run.version_table)
        elif run.resolution == "applied":
            project.stamp(connection, row.revision, run.version_table)
        book.resolve(row.row_id, run.resolution)
        run.read_current(connection)
        log.info("resolve.recorded", revision=row.revision, resolution=run.resolution)
    return ExitCode.OK
