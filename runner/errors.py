"""The exit-code contract: every way a run can end, and the code it exits with.

This module is the one place that maps outcomes to process exit codes. The
codes follow BSD ``sysexits.h`` where one fits, so that a Kubernetes
``podFailurePolicy``, a Helm hook or a CI stage can tell a failure worth
retrying (69, 75) from one that will fail the same way again (65, 66, 78)::

    BaseException
    ├── RunnerError                  exit_code on the class
    │   ├── ConfigError              78  EX_CONFIG
    │   │   ├── BrokenRevisionFiles  78  (import error, dangling down_revision, cycle)
    │   │   └── LockLost             78  (transaction-pooling PgBouncer, failover)
    │   ├── DatabaseUnavailable      69  EX_UNAVAILABLE
    │   │   └── ConnectionLost       69  (the runner reconnects before giving up)
    │   ├── LockTimeout              75  EX_TEMPFAIL
    │   ├── WaitTimeout              75  EX_TEMPFAIL
    │   ├── MigrationFailed          65  EX_DATAERR
    │   └── UnknownRevision          66  EX_NOINPUT
    └── KeyboardInterrupt
        ├── Interrupted              130 (SIGINT) / 143 (SIGTERM)
        └── RunTimeout               75  MIGRATION_TIMEOUT ran out

``Interrupted`` and ``RunTimeout`` derive from ``KeyboardInterrupt`` on
purpose: psycopg 3 cancels the running statement on the server when a
``KeyboardInterrupt`` arrives while it waits for a result (psycopg docs,
"Interrupting a query"), and nothing catching ``Exception`` swallows them.
"""

from __future__ import annotations

import enum
import signal


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


# The documented table: --help prints it and README repeats it (a test compares).
MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success: revisions applied, or nothing to do",
    ExitCode.NOT_AT_TARGET: "check: database not at target",
    ExitCode.USAGE: "command-line usage error",
    ExitCode.MIGRATION_FAILED: "a migration failed: the revision, SQLSTATE if any, and message are logged",
    ExitCode.UNKNOWN_REVISION: "the database is at a revision the script directory does not have "
    "(e.g. after an application rollback); MIGRATION_ALLOW_UNKNOWN_REVISION=true makes "
    "upgrade and wait exit 0",
    ExitCode.DATABASE_UNAVAILABLE: "database unreachable",
    ExitCode.INTERNAL_ERROR: "internal error (a bug: please report it with the log)",
    ExitCode.TIMEOUT: "the lock, wait or MIGRATION_TIMEOUT timed out; a later retry may succeed",
    ExitCode.CONFIG_INVALID: "configuration invalid: a bad or missing setting, a rejected login, a missing script "
    "directory, broken revision files, an unknown target, several heads when one target is required, "
    "or an advisory lock lost to a pooler",
    ExitCode.SIGINT: "interrupted by SIGINT",
    ExitCode.SIGTERM: "interrupted by SIGTERM",
}


# Codes worth running again (the database may come back, the other runner may finish, the pod
# was stopped); every other non-zero code fails the same way again. The Helm chart's
# podFailurePolicy is built from this split (a test keeps them in step).
RETRYABLE: frozenset[ExitCode] = frozenset(
    {ExitCode.DATABASE_UNAVAILABLE, ExitCode.TIMEOUT, ExitCode.SIGINT, ExitCode.SIGTERM}
)


class RunnerError(Exception):
    """Base of the errors that end a run with a documented exit code.

    Args:
        message: one actionable line for the user; never contains a password.

    """

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR
    event: str = "run.failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RunnerError):
    """A setting, the script directory, the target or the heads are unusable."""

    exit_code = ExitCode.CONFIG_INVALID
    event = "config.invalid"


class BrokenRevisionFiles(ConfigError):
    """A revision file does not import, names a missing ``down_revision``, or closes a cycle."""

    event = "revisions.broken"


class LockLost(ConfigError):
    """This session no longer holds the advisory lock it took.

    Seen behind a transaction-pooling PgBouncer, where each transaction may run
    on another server session, and after a failover.
    """

    event = "lock.lost"


class DatabaseUnavailable(RunnerError):
    """The database refused or dropped the connection (SQLSTATE class 08, ...)."""

    exit_code = ExitCode.DATABASE_UNAVAILABLE
    event = "database.unavailable"


class ConnectionLost(DatabaseUnavailable):
    """An open connection died mid-run; ``upgrade`` reconnects and resumes."""

    event = "database.connection_lost"


class LockTimeout(RunnerError):
    """Another runner held the advisory lock for longer than ``lock_timeout``."""

    exit_code = ExitCode.TIMEOUT
    event = "lock.timeout"


class WaitTimeout(RunnerError):
    """``wait`` gave up before the database reached the target."""

    exit_code = ExitCode.TIMEOUT
    event = "wait.timeout"


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
    """

    exit_code = ExitCode.MIGRATION_FAILED
    event = "revision.failed"

    def __init__(self, message: str, *, revision: str | None, sqlstate: str | None, transactional: bool = True) -> None:
        super().__init__(message)
        self.revision = revision
        self.sqlstate = sqlstate
        self.transactional = transactional


class Interrupted(KeyboardInterrupt):
    """The process received SIGTERM or SIGINT.

    Args:
        signum: the signal number; the exit code is 128 + signum.

    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunTimeout(KeyboardInterrupt):
    """``MIGRATION_TIMEOUT`` seconds passed; the run stops as on SIGTERM, with exit 75.

    Args:
        seconds: the deadline that passed.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"MIGRATION_TIMEOUT={seconds:g} s ran out")
        self.seconds = seconds


def exit_code_for(error: BaseException) -> ExitCode:
    """Map an exception that ended a run to the process exit code.

    Args:
        error: what propagated to the top of the command.

    Returns:
        The documented code; ``ExitCode.INTERNAL_ERROR`` (70) for anything unforeseen.

    """
    if isinstance(error, RunnerError):
        return error.exit_code
    if isinstance(error, RunTimeout):
        return ExitCode.TIMEOUT
    if isinstance(error, Interrupted):
        return ExitCode.SIGTERM if error.signum == signal.SIGTERM else ExitCode.SIGINT
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.SIGINT
    return ExitCode.INTERNAL_ERROR
