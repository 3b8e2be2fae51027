"""The exit-code contract: every way a run can end, and the code it exits with.

This module is the one place that maps outcomes to process exit codes. The
codes follow BSD ``sysexits.h`` where one fits, so that a Kubernetes
``podFailurePolicy``, a Helm hook or a CI stage can tell a failure worth
retrying (69, 75) from one that will fail the same way again (65, 66, 78)::

    BaseException
    ├── RunnerError                  exit_code on the class
    │   ├── ConfigError              78  EX_CONFIG
    │   │   ├── BrokenRevisionFiles  78  (import error, dangling down_revision, cycle)
    │   │   ├── BrokenProject        78  (no env.py, no revisions, env.py fails before any revision)
    │   │   └── LockLost             78  (transaction-pooling PgBouncer, failover)
    │   ├── DatabaseUnavailable      69  EX_UNAVAILABLE
    │   │   ├── ConnectionLost       69  (the runner reconnects before giving up)
    │   │   └── ReadOnlyDatabase     69  (a hot standby, or default_transaction_read_only)
    │   ├── LockTimeout              75  EX_TEMPFAIL
    │   ├── WaitTimeout              75  EX_TEMPFAIL
    │   ├── BeforeApplyFailed        75  (MIGRATION_BEFORE_APPLY_COMMAND: nothing was applied)
    │   ├── MigrationFailed          65  EX_DATAERR
    │   │   ├── InterruptedRevision  65  (the ledger shows a revision that never finished)
    │   │   ├── VersionTableRewound  65  (the ledger records revisions the version table no longer has)
    │   │   └── RevisionDrifted      65  (MIGRATION_DRIFT=fail: an applied revision's file changed)
    │   └── UnknownRevision          66  EX_NOINPUT
    └── KeyboardInterrupt
        ├── Interrupted              130 (SIGINT) / 143 (SIGTERM)
        └── RunTimeout               75  MIGRATION_TIMEOUT ran out

:func:`outcome_of` is the one function that turns whatever ended a run into
its exit code, event name and one-line message; the CLI calls nothing else.

``Interrupted`` and ``RunTimeout`` derive from ``KeyboardInterrupt`` on
purpose: psycopg 3 cancels the running statement on the server when a
``KeyboardInterrupt`` arrives while it waits for a result (psycopg docs,
"Interrupting a query"), and nothing catching ``Exception`` swallows them.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


class ExitCode(enum.IntEnum):
    """Process exit codes of ``migration-runner``; :data:`MEANINGS` explains each."""

    OK = 0
    NOT_AT_TARGET = 1
    USAGE = 2
    MIGRATION_FAILED = 65
    UNKNOWN_REVISION = 66
    DATABASE_UNAVAILABLE = 69
    INTERNAL_ERROR = 70
    TIMEOUT = 75
    CONFIG_INVALID = 78
    SIGINT = 130
    SIGTERM = 143


# The documented table: --help prints it, README and docs/exit-codes.md repeat it (a test compares).
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success: revisions applied, or nothing to do",
    ExitCode.NOT_AT_TARGET: "not done yet: check, the database is not at the target; plan, something is pending; "
    "verify, a check failed",
    ExitCode.USAGE: "command-line usage error",
    ExitCode.MIGRATION_FAILED: "a migration failed, or an earlier one was interrupted where it cannot be rolled "
    "back (MySQL), or MIGRATION_DRIFT=fail found an applied revision whose file changed: the revision, SQLSTATE "
    "if any, and message are logged",
    ExitCode.UNKNOWN_REVISION: "the database is at a revision the script directory does not have "
    "(e.g. after an application rollback); MIGRATION_ALLOW_UNKNOWN_REVISION=true makes "
    "upgrade and wait exit 0",
    ExitCode.DATABASE_UNAVAILABLE: "database unreachable, or read-only (a hot standby during a failover)",
    ExitCode.INTERNAL_ERROR: "internal error (a bug: please report it with the log)",
    ExitCode.TIMEOUT: "the lock, wait or MIGRATION_TIMEOUT timed out, or MIGRATION_BEFORE_APPLY_COMMAND failed "
    "(nothing was applied); a later retry may succeed",
    ExitCode.CONFIG_INVALID: "configuration invalid: a bad or missing setting, a rejected login, a URL without a "
    "database, a script directory without env.py or revisions, an env.py or revision file that fails to load, "
    "an unknown target or one older than the database (upgrade never downgrades), several heads when one "
    "target is required, or an advisory lock lost to a pooler",
    ExitCode.SIGINT: "interrupted by SIGINT",
    ExitCode.SIGTERM: "interrupted by SIGTERM",
}


# Codes worth running again (the database may come back, the other runner may finish, the pod
# was stopped); every other non-zero code fails the same way again. The Helm chart's
# podFailurePolicy is built from this split (a test keeps them in step).
RETRYABLE: frozenset[ExitCode] = frozenset(
    {ExitCode.DATABASE_UNAVAILABLE, ExitCode.TIMEOUT, ExitCode.SIGINT, ExitCode.SIGTERM}
)


# From most to least severe: what ``--all`` exits with when databases end differently
# (docs/kubernetes.md, "Many databases"). A bug first, then what needs a person (a failed or partial
# migration, a rolled-back image, a configuration), then what a retry may fix, then "behind".
SEVERITY: tuple[ExitCode, ...] = (
    ExitCode.INTERNAL_ERROR,
    ExitCode.MIGRATION_FAILED,
    ExitCode.UNKNOWN_REVISION,
    ExitCode.CONFIG_INVALID,
    ExitCode.USAGE,
    ExitCode.DATABASE_UNAVAILABLE,
    ExitCode.TIMEOUT,
    ExitCode.SIGTERM,
    ExitCode.SIGINT,
    ExitCode.NOT_AT_TARGET,
    ExitCode.OK,
)


def most_severe(codes: Iterable[int]) -> ExitCode:
    """The most severe of some exit codes (:data:`SEVERITY`); an unknown code counts as a bug (70); none is 0."""
    rank = {code: position for position, code in enumerate(SEVERITY)}
    found = [ExitCode(code) if code in rank else ExitCode.INTERNAL_ERROR for code in codes]
    return min(found, key=lambda code: rank[code], default=ExitCode.OK)


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then what it was raised from or during (``__cause__``, else ``__context__``), innermost last.

    A chain that comes back on itself ends at the first repeat.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class RunnerError(Exception):
    """Base of the errors that end a run with a documented exit code.

    Args:
        message: one actionable line for the user; never contains a password.

    """

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR
    event: str = "run.failed"
    outcome: str = ""  # the outcome's word, where the exit code's name would not say what happened

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """Fields for the log event and the result document's ``error`` beyond the message; none here."""
        return {}


class ConfigError(RunnerError):
    """A setting, the script directory, the target or the heads are unusable."""

    exit_code = ExitCode.CONFIG_INVALID
    event = "config.invalid"


class BrokenRevisionFiles(ConfigError):
    """A revision file does not import, names a missing ``down_revision``, or closes a cycle."""

    event = "revisions.broken"


class BrokenProject(ConfigError):
    """The project cannot run: no ``env.py``, no revisions, or ``env.py`` fails before any revision runs."""

    event = "project.broken"


class LockLost(ConfigError):
    """This session no longer holds the advisory lock it took.

    Seen behind a transaction-pooling PgBouncer, where each transaction may run
    on another server session, and after a failover.
    """

    event = "lock.lost"


class DatabaseUnavailable(RunnerError):
    """The database refused or dropped the connection, after ``MIGRATION_CONNECT_TIMEOUT`` of retries.

    SQLSTATE class 08 (connection exception), 57P01-57P03 (the server is shutting
    down or starting up), and a driver's own connect errors (PostgreSQL docs, "Appendix A").
    """

    exit_code = ExitCode.DATABASE_UNAVAILABLE
    event = "database.unavailable"


class ConnectionLost(DatabaseUnavailable):
    """An open connection died mid-run.

    ``upgrade`` reconnects and resumes from what the database records; after
    ``MAX_RECONNECTS`` (:mod:`runner.commands.migrate`) it is 69.
    """

    event = "database.connection_lost"


class ReadOnlyDatabase(DatabaseUnavailable):
    """The URL reaches a server that accepts no writes: a hot standby, or ``default_transaction_read_only``.

    Retryable on purpose: during a failover, DNS may still point at the demoted primary.
    """

    event = "database.read_only"


class LockTimeout(RunnerError):
    """Another runner held the advisory lock for longer than ``lock_timeout``."""

    exit_code = ExitCode.TIMEOUT
    event = "lock.timeout"


class WaitTimeout(RunnerError):
    """``wait`` gave up before the database reached the target."""

    exit_code = ExitCode.TIMEOUT
    event = "wait.timeout"


class BeforeApplyFailed(RunnerError):
    """``MIGRATION_BEFORE_APPLY_COMMAND`` exited non-zero or ran out of time; no revision ran.

    Retryable: a backup that failed for want of space or a network may succeed next time.

    Args:
        message: what happened.
        exit_status: the command's exit status; ``None`` when it was stopped at its timeout.
        stderr: its last lines of standard error, redacted.
    """

    exit_code = ExitCode.TIMEOUT
    event = "before_apply.failed"
    outcome = "before_apply_failed"  # 75 as a timeout is, but the outcome says what happened

    def __init__(self, message: str, *, exit_status: int | None, stderr: list[str]) -> None:
        super().__init__(message)
        self.exit_status = exit_status
        self.stderr = stderr

    def details(self) -> dict[str, Any]:
        """The command's exit status and its last lines of standard error."""
        return {"command_exit_status": self.exit_status, "stderr": self.stderr}


class UnknownRevision(RunnerError):
    """The database is at a revision that the script directory does not contain.

    This is what an application rollback looks like: the newer image migrated
    the database, the older image no longer ships that revision.
    """

    exit_code = ExitCode.UNKNOWN_REVISION
    event = "revision.unknown"

    def __init__(self, message: str, revisions: list[str]) -> None:
        super().__init__(message)
        self.revisions = revisions


class MigrationFailed(RunnerError):
    """A revision raised while it was applied.

    Args:
        message: the database's or Python's error message, first line.
        revision: the id of the revision that failed.
        sqlstate: the five-character SQLSTATE when the database gave one.
        transactional: the revision ran inside a transaction that was rolled
            back. False for an ``autocommit_block`` or MySQL's DDL: its changes
            may be partly applied, and it is never retried.
        statement: the SQL statement that failed, as :func:`runner.drivers.shown_statement` shows it
            (one line, redacted, at most 300 characters), when a statement failed.
        location: ``file:line`` of the revision's own frame that raised, when it is known.
    """

    exit_code = ExitCode.MIGRATION_FAILED
    event = "revision.failed"

    def __init__(
        self,
        message: str,
        *,
        revision: str | None,
        sqlstate: str | None,
        transactional: bool = True,
        statement: str | None = None,
        location: str | None = None,
    ) -> None:
        where = [f"at {location}"] if location else []
        where += [f"in: {statement}"] if statement else []
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.revision = revision
        self.sqlstate = sqlstate
        self.transactional = transactional
        self.statement = statement
        self.location = location

    def details(self) -> dict[str, Any]:
        """The failed revision, its SQLSTATE, whether it may be partly applied, and the statement and line."""
        found = {"revision": self.revision, "sqlstate": self.sqlstate, "partially_applied": not self.transactional}
        return found | {"statement": self.statement, "file": self.location}


class InterruptedRevision(MigrationFailed):
    """The ledger records a revision that started and never finished on a database without transactional DDL.

    Its changes may be partly applied; the runner never guesses and never runs it again
    until ``migration-runner resolve`` records what the operator found.
    """

    event = "revision.interrupted"

    def __init__(self, message: str, *, revision: str) -> None:
        super().__init__(message, revision=revision, sqlstate=None, transactional=False)


class VersionTableRewound(MigrationFailed):
    """The version table is emptied or rewound while the ledger records later revisions as applied.

    Upgrading would run them again over the schema they left behind. The
    runner refuses until the version table is restored (``stamp``) or
    ``migration-runner resolve --mark not-applied`` records them as undone.

    Args:
        message: the last recorded revision, when and where, and the ways out.
        revisions: the revisions the ledger has and the version table lacks.
    """

    event = "version_table.rewound"

    def __init__(self, message: str, *, revisions: list[str]) -> None:
        super().__init__(message, revision=revisions[-1] if revisions else None, sqlstate=None)
        self.revisions = revisions

    def details(self) -> dict[str, Any]:
        """The last recorded revision, and all the ones the version table lacks; nothing was applied."""
        return {"revision": self.revision, "revisions": self.revisions, "partially_applied": False}


class RevisionDrifted(MigrationFailed):
    """``MIGRATION_DRIFT=fail``: applied revisions' files changed since they ran; nothing was done.

    Not worth retrying: the files stay as they are until someone reviews them
    and runs ``migration-runner accept``, or restores them.

    Args:
        message: what changed and the way out.
        revisions: the drifted revisions.
    """

    event = "revision.drift_refused"

    def __init__(self, message: str, *, revisions: list[str]) -> None:
        super().__init__(message, revision=revisions[0] if revisions else None, sqlstate=None)
        self.revisions = revisions

    def details(self) -> dict[str, Any]:
        """The first drifted revision, and all of them."""
        return {"revision": self.revision, "drifted": self.revisions}


class Stopped(KeyboardInterrupt):
    """The runner itself stopped the run (a signal or the deadline), possibly in a revision.

    Attributes:
        revision: the revision that was running when it arrived, set by the driver.
        transactional: that revision ran in a transaction, which was rolled back.
    """

    revision: str | None = None
    transactional: bool = True


class Interrupted(Stopped):
    """The process received SIGTERM or SIGINT.

    Args:
        signum: the signal number; the exit code is 128 + signum.

    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunTimeout(Stopped):
    """``MIGRATION_TIMEOUT`` seconds passed; the run stops as on SIGTERM, with exit 75.

    Args:
        seconds: the deadline that passed.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"MIGRATION_TIMEOUT={seconds:g} s ran out")
        self.seconds = seconds


@dataclass(frozen=True)
class Outcome:
    """How a run ended, as the CLI reports it.

    Attributes:
        code: the process exit code.
        event: the log event that says so (``run.interrupted``, ``revision.failed``, ...).
        message: one actionable line, or ``""`` on success; never a password.
        level: the log level of the event: ``info``, ``warning`` or ``error``.
        details: extra fields for the event and the result document
            (``revision``, ``sqlstate``, ``partially_applied``).
        internal: a bug of the runner's own: the log carries the traceback.
        name: the outcome's word where the exit code's name would not say what happened
            (``before_apply_failed`` for a 75); empty otherwise.
    """

    code: ExitCode
    event: str
    message: str = ""
    level: str = "error"
    details: dict[str, Any] = field(default_factory=dict)
    internal: bool = False
    name: str = ""

    @property
    def word(self) -> str:
        """How the run ended in one word, for the result document, the termination message and the metrics."""
        return self.name or ("success" if self.code == ExitCode.OK else self.code.name.lower())


def abandoned(outcome: Outcome, reason: str, seconds: float) -> Outcome:
    """The run did not end within its grace period or its reporting bound: the process ends with ``outcome``'s code.

    Args:
        outcome: what ended the run (a signal's, the deadline's, or the run's own).
        reason: which bound passed.
        seconds: how long it was.

    Returns:
        The ``run.abandoned`` outcome the watchdog logs, with ``outcome``'s exit code.
    """
    return Outcome(outcome.code, "run.abandoned", reason, details={"reason": reason, "after_seconds": seconds})


def _stopped_message(error: Stopped, what: str) -> str:
    if error.revision is None:
        return what
    if error.transactional:
        return f"{what} while applying revision {error.revision}; its transaction was rolled back"
    return (
        f"{what} while applying revision {error.revision}, which runs outside a transaction: "
        "its changes may be partly applied; the next run refuses to go on until `migration-runner resolve`"
    )


def outcome_of(error: BaseException | None, *, code: ExitCode = ExitCode.OK) -> Outcome:
    """Turn whatever ended a run into its exit code, event and one-line message.

    This is the only place that decides the exit code of a run (docs/exit-codes.md).

    Args:
        error: what propagated out of the command, or ``None`` when it returned.
        code: what the command returned, when ``error`` is ``None`` (0 or 1).

    Returns:
        The outcome. A :class:`RunnerError` keeps its own code, event and message;
        a signal gives 130 or 143, the deadline 75; anything else is a bug of the
        runner's own (70): project code's exceptions reach here only as
        :class:`MigrationFailed` or :class:`ConfigError`.
    """
    if error is None:
        return Outcome(code, "run.succeeded" if code == ExitCode.OK else "run.not_at_target", level="info")
    if isinstance(error, RunnerError):
        return Outcome(error.exit_code, error.event, error.message, details=error.details(), name=error.outcome)
    if isinstance(error, RunTimeout):
        details = {"revision": error.revision, "partially_applied": not error.transactional}
        return Outcome(ExitCode.TIMEOUT, "run.timeout", _stopped_message(error, str(error)), details=details)
    if isinstance(error, KeyboardInterrupt):  # Interrupted, or a KeyboardInterrupt before our handler
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        stopped = error if isinstance(error, Stopped) else Stopped()
        details = {"signal": name, "revision": stopped.revision, "partially_applied": not stopped.transactional}
        return Outcome(
            ExitCode.SIGTERM if signum == signal.SIGTERM else ExitCode.SIGINT,
            "run.interrupted",
            _stopped_message(stopped, f"interrupted by {name}"),
            level="warning",
            details=details,
        )
    if getattr(getattr(error, "orig", None), "sqlstate", None) == "57014":
        # query_canceled: statement_timeout (MIGRATION_STATEMENT_TIMEOUT) also bounds the runner's own queries
        # on the migration connection; a value too small for them is the setting's doing, not a bug.
        message = (
            "a query of the runner's own was cancelled (SQLSTATE 57014, statement_timeout): "
            "MIGRATION_STATEMENT_TIMEOUT is too short for the run; raise it"
        )
        return Outcome(ExitCode.TIMEOUT, "run.timeout", message, details={"revision": None, "sqlstate": "57014"})
    return Outcome(
        ExitCode.INTERNAL_ERROR,
        "run.crashed",
        f"internal error: {type(error).__name__}: {error} (a bug in migration-runner: please report it with the log)",
        internal=True,
    )
