"""``upgrade`` and ``downgrade``: the lock, the ledger's checks, the before-apply command, the driver's run, retries."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import tenacity
from sqlalchemy.engine import Connection, Engine

from runner import checksum, database, drivers, ledger, locks, logs
from runner.commands.ledger_checks import (
    _adopt,
    _judge_drift,
    _ledger_work,
    _read_ledger,
    _refuse_rewound,
    _refuse_unfinished,
    _rewound,
)
from runner.commands.run import Run, known_revisions, require_known_revisions
from runner.drivers import DOES_NOTHING, Applied, Driver, Step
from runner.errors import (
    BrokenProject,
    ConfigError,
    ConnectionLost,
    ExitCode,
    MigrationFailed,
    ReadOnlyDatabase,
    Stopped,
    UnknownRevision,
)
from runner.logs import get_logger

MAX_RECONNECTS = 10
# Lock not available, deadlock detected, serialization failure (PostgreSQL docs, "Appendix A").
RETRYABLE_SQLSTATES = frozenset({"55P03", "40P01", "40001"})
# How often, at most, the lock is verified between revisions (seconds).
LOCK_CHECK_INTERVAL_SECONDS = 1.0


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


# Each direction's words: the key of its steps in ``.started``, of their count in ``.finished``, what a step
# the tool did not run still is, and what another runner did while this one waited for the lock.
_WORDS = {
    "upgrade": ("pending", "applied", "pending", "migrated"),
    "downgrade": ("reverting", "reverted", "applied", "reverted"),
}


@dataclass(frozen=True)
class _Way:
    """What differs between upgrade and downgrade on their one path (:func:`_migrate_once`).

    Attributes:
        name: ``upgrade`` or ``downgrade``: the prefix of its events, the key of :data:`_WORDS`.
        target: the target as the events show it.
        steps: the steps from the database's current revisions to the target, in order.
        under_lock: the ledger's checks under the lock, before any step runs.
        look: before the lock, what the ledger says (upgrade's drift check), or ``None``.
    """

    name: str
    target: Callable[[], str]
    steps: Callable[[Driver, Sequence[str]], list[Step]]
    under_lock: Callable[[Run, Driver, ledger.Ledger, Connection, Sequence[str]], None]
    look: Callable[[Run, Driver, Connection, Sequence[str]], Any] = lambda *_: None

    def left_over(self, project: Driver, after: Sequence[str], step: Step) -> bool:
        """The step is still to do after the tool returned: pending after an upgrade, applied after a downgrade."""
        return project.is_applied(after, step.revision) == (self.name == "downgrade")


def _migrate(run: Run, way: _Way) -> ExitCode:
    """Run ``way`` to its target, again after each lost connection (the lock, the re-read and all)."""
    project = run.project()
    engine = run.engine(run.migration_url())
    for attempt in _reconnecting(run):
        with attempt:
            _migrate_once(run, project, engine, way)
    return ExitCode.OK


def _migrate_once(run: Run, project: Driver, engine: Engine, way: _Way) -> None:
    """Upgrade or downgrade once: no-op without the lock when nothing is to do, else under it, step by step.

    Raises:
        BrokenProject: the tool's run returned with steps still to do (an offline-only env.py, say).
        And what :func:`upgrade` and :func:`downgrade` document.
    """
    log, done = get_logger(), "already at target"
    steps_key, done_key, left_state, verb = _WORDS[way.name]
    raced = f"another runner {verb} while this one waited for the lock"
    with (
        run.connect(engine) as connection,
        database.losing_connection_raises(),
    ):
        current = run.read_current(connection)
        steps = way.steps(project, current)
        view = way.look(run, project, connection, current)
        if not steps and not (view is not None and _ledger_work(run, view, connection)):
            log.info(f"{way.name}.noop", current=run.shown(current), target=way.target(), reason=done)
            return
        with _migration_lock(run, connection) as held:
            current = run.read_current(connection)  # another runner may have done it meanwhile
            steps = way.steps(project, current)
            if not steps and not (view is not None and view.needs_lock):
                # Followers pass the lock on one by one: this path stays short (no ledger work).
                log.info(f"{way.name}.noop", current=run.shown(current), target=way.target(), reason=raced)
                return
            book = run.ledger()
            book.prepare(held.connection or connection)
            way.under_lock(run, project, book, connection, current)
            if not steps:
                log.info(f"{way.name}.noop", current=run.shown(current), target=way.target(), reason=done)
                return
            _before_apply(run, project, held, current, steps)
            log.info(
                f"{way.name}.started",
                current=run.shown(current),
                target=way.target(),
                **{steps_key: [s.revision for s in steps]},
            )
            started = time.monotonic()
            # A relative target (+2) is fixed now, so a retry after revision 1 does not go 2 further.
            target = steps[-1].revision if project.is_relative(way.target()) else way.target()
            _apply(run, project, connection, held, book, target=target)
            after = run.read_current(connection)
            left = [s.revision for s in steps if way.left_over(project, after, s)]
            if left:
                raise BrokenProject(project.returned_early(left, left_state))
            log.info(
                f"{way.name}.finished",
                current=run.shown(after),
                **{done_key: len(steps)},
                duration_seconds=round(time.monotonic() - started, 6),
            )


def _look_at_the_ledger(run: Run, project: Driver, connection: Connection, current: Sequence[str]) -> Any:
    """Upgrade, before the lock: the ledger's view of the applied revisions, drift judged (``MIGRATION_DRIFT``)."""
    view = _read_ledger(run, project, connection, current)
    _judge_drift(run, view)
    return view


def _settle_the_ledger(
    run: Run, project: Driver, book: ledger.Ledger, connection: Connection, current: Sequence[str]
) -> None:
    """Upgrade, under the lock: adopt unrecorded revisions, refuse an unfinished step or a rewound version table."""
    _adopt(project, book, current)
    _refuse_unfinished(project, book, current)
    # Under the lock: the version table and the ledger are read with no runner writing either.
    _refuse_rewound(run, connection, current, _rewound(run, project, connection, current))


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
    allow = run.settings.allow_unknown_revision
    return _migrate(
        run,
        _Way(
            "upgrade",
            target=lambda: run.settings.target,
            steps=lambda project, current: _plan(run, project, current, allow_unknown=allow, upgrading=True),
            under_lock=_settle_the_ledger,
            look=_look_at_the_ledger,
        ),
    )


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
            f"{database.redact(run.target.url)} reaches a read-only server: {read_only}; "
            "point MIGRATION_DATABASE_URL at the primary (during a failover, retrying finds the new one)"
        )
    with locks.migration_lock(
        run.target.url,
        key=run.lock_key(connection),
        timeout=settings.lock_timeout,
        application_name=run.application_name,
        connect_for=settings.connect_timeout,
        on_connect_retry=lambda: run.report.retried("connect"),
    ) as held:
        run.report.lock_acquired(held.wait_seconds)
        yield held


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
        env=before_apply.environment_for(context, run.target.light_url, os.environ),
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
            "downgrade needs a target, and has no default: migration-runner downgrade TARGET, --target or "
            "MIGRATION_TARGET (Alembic: a revision id, -N or base; Django: app_label:migration_name or "
            "app_label:zero); nothing was reverted"
        )
    run.refuse_in_production(
        allowed=settings.allow_downgrade,
        refusal="downgrade is refused in production unless MIGRATION_ALLOW_DOWNGRADE=true: when one is really "
        "needed, run it as a Job of its own with that setting (docs/commands.md, 'Rolling back'); nothing was reverted",
    )
    require_known_revisions(
        known_revisions(run.project()),
        [("MIGRATION_NOOP_DOWNGRADES", settings.noop_downgrades)],
        nothing="nothing was reverted",
    )
    target = [settings.target]  # a relative target (-1) is fixed once planned: a reconnect must not go further
    only_unfinished = lambda _, project, book, __, current: _refuse_unfinished(project, book, current)  # noqa: E731
    steps = lambda project, current: _reverting(run, project, current, target)  # noqa: E731
    return _migrate(run, _Way("downgrade", target=lambda: target[0], steps=steps, under_lock=only_unfinished))


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
    declared = set(run.settings.noop_downgrades)  # empty on purpose: run through, recorded as noop
    blocked = [(r, why) for r, why in project.irreversible(steps) if not (why == DOES_NOTHING and r in declared)]
    if blocked:
        named = "; ".join(f"{revision} ({why})" for revision, why in blocked)
        raise ConfigError(
            f"downgrade to {target[0]!r} would revert {named}, which cannot be reverted; "
            "nothing was reverted: choose a target above it (or, for a downgrade() empty on purpose, "
            "list it in MIGRATION_NOOP_DOWNGRADES)"
        )
    reverted = {s.revision for s in steps}
    ending = (set(current) - reverted) | {r for s in steps for r in s.parents if r not in reverted}
    run.report.planned(steps)
    run.report.target = sorted(project.summary(sorted(ending)))
    if steps and target[0].startswith("-"):  # Alembic's -N: from now on, where it ends
        target[0] = sorted(ending)[0] if len(ending) == 1 else "base" if not ending else target[0]
    return steps


def _apply(
    run: Run,
    project: Driver,
    connection: Connection,
    held: locks.HeldLock,
    book: ledger.Ledger,
    *,
    target: str,
    direction: str | None = None,
    before: Callable[[str], None] | None = None,
    after: Callable[[Applied], None] | None = None,
) -> None:
    """Run the upgrade (or downgrade: ``direction``, default the run's) to ``target``; retry retryable SQLSTATEs.

    ``before`` and ``after`` (``verify``'s) are called with each step, before it starts and once it has
    committed, on the thread that runs the steps; what they raise ends the run and reaches the caller.
    """
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
        if after is not None:
            after(revision)

    verified = [-LOCK_CHECK_INTERVAL_SECONDS]  # the first revision always asks (behind a pooler, this fails)

    def before_each(revision: str) -> None:
        if before is not None:
            before(revision)
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
