"""``MIGRATION_BEFORE_APPLY_COMMAND``: a safety net (a backup, a snapshot) run before the first revision.

``upgrade`` and ``downgrade`` run it only when something is pending, after the
lock is taken and the version table read again, so it runs once per change and
never on a no-op. The lock stays held, and is verified, while it runs.

It gets the run's context in its environment and never the URL: the password
reaches it only as the client libraries' own variables (``PGPASSWORD`` for
libpq, so ``pg_dump`` needs no arguments; ``MYSQL_PWD`` for the MariaDB and
MySQL clients), and every variable of ours that holds a secret is left out.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from runner import logs, urls
from runner.errors import BeforeApplyFailed, ConfigError

# How much of the command's standard error the result document keeps (lines, characters per line).
STDERR_TAIL_LINES = 20
STDERR_LINE_MAX_CHARS = 1000
# After the timeout: SIGTERM to the command's process group, then SIGKILL after this many seconds.
KILL_AFTER_SECONDS = 5.0
_POLL_SECONDS = 0.1
# Variables never passed on: they hold the URL, and so the password.
_WITHHELD = ("MIGRATION_DATABASE_URL", "DATABASE_URL")


@dataclass(frozen=True)
class Context:
    """What the command is told about the change it guards.

    Attributes:
        run_id: the run's id (as in every log event).
        environment: ``MIGRATION_ENVIRONMENT``.
        tool: ``alembic`` or ``django``.
        direction: ``up`` or ``down``.
        current: the database's revisions now.
        target: the revisions the run goes to.
        pending: the revisions about to run, in order.
    """

    run_id: str
    environment: str
    tool: str
    direction: str
    current: Sequence[str]
    target: Sequence[str]
    pending: Sequence[str]


def environment_for(context: Context, url: urls.DatabaseUrl, parent: Mapping[str, str]) -> dict[str, str]:
    """The command's environment: ours without secrets, the context, and the client libraries' variables.

    Args:
        context: the change.
        url: the run's database.
        parent: this process's environment.

    Returns:
        The variables, as ``subprocess`` takes them.
    """
    secrets = [*url.secrets(), *logs.known_secrets()]
    env = {
        name: value
        for name, value in parent.items()
        if name not in _WITHHELD and not any(secret in value for secret in secrets)
    }
    env.update(
        MIGRATION_RUN_ID=context.run_id,
        MIGRATION_ENVIRONMENT=context.environment,
        MIGRATION_TOOL=context.tool,
        MIGRATION_DIRECTION=context.direction,
        MIGRATION_CURRENT=" ".join(context.current),
        MIGRATION_TARGET_REVISIONS=" ".join(context.target),
        MIGRATION_PENDING=" ".join(context.pending),
        MIGRATION_DATABASE_NAME=url.database_name,
        MIGRATION_DATABASE_USER=url.username or "",
    )
    # libpq's environment variables (PostgreSQL docs, "34.15. Environment Variables"); the MariaDB
    # and MySQL clients' MYSQL_HOST, MYSQL_TCP_PORT and MYSQL_PWD.
    client = (
        {"PGHOST": url.host, "PGPORT": url.port, "PGUSER": url.username, "PGPASSWORD": url.password}
        if url.family == "postgresql"
        else {"MYSQL_HOST": url.host, "MYSQL_TCP_PORT": url.port, "MYSQL_PWD": url.password}
        if url.family == "mysql"
        else {}
    )
    if url.family == "postgresql" and url.database_name:
        client["PGDATABASE"] = url.database_name
    env.update({name: str(value) for name, value in client.items() if value not in (None, "")})
    return env


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str],
    verify_lock: Callable[[], None],
    verify_every: float = 1.0,
) -> float:
    """Run the command to the end, verifying the lock while it runs.

    Its standard output is discarded (a backup goes to a file or a bucket, not
    into the log stream); each line of its standard error is logged as
    ``before_apply.output``, redacted, and the last lines are kept for the error.

    Args:
        argv: the program and its arguments (never a shell string).
        timeout: seconds before the command's process group is stopped.
        env: its environment (:func:`environment_for`).
        verify_lock: raises when the migration lock is lost.
        verify_every: seconds between lock checks.

    Returns:
        How long it ran, in seconds.

    Raises:
        ConfigError: the program cannot be started (not found, not executable).
        BeforeApplyFailed: it exited non-zero or ran out of time (exit 75: nothing was applied).
        LockLost, ConnectionLost: from ``verify_lock``.
    """
    log = logs.get_logger()
    log.info("before_apply.started", command=argv[0], timeout_seconds=timeout)
    started = time.monotonic()
    try:
        process = subprocess.Popen(  # noqa: S603  (the operator's own command, as an argv list)
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a timeout stops its children too
        )
    except OSError as error:
        raise ConfigError(
            f"MIGRATION_BEFORE_APPLY_COMMAND: cannot run {argv[0]!r} ({error.strerror or error}); "
            "give the program's path as the array's first element"
        ) from None
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
    reader = threading.Thread(target=_read_stderr, args=(process, tail), daemon=True)
    reader.start()
    checked = started
    try:
        while process.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                _stop(process)
                reader.join(timeout=1.0)
                raise BeforeApplyFailed(
                    f"MIGRATION_BEFORE_APPLY_COMMAND {argv[0]} ran longer than MIGRATION_BEFORE_APPLY_TIMEOUT="
                    f"{timeout:g} s and was stopped; nothing was applied",
                    exit_status=None,
                    stderr=list(tail),
                )
            if now - checked >= verify_every:
                verify_lock()
                checked = now
            time.sleep(_POLL_SECONDS)
    finally:
        if process.poll() is None:  # a signal, a lost lock: the command must not outlive the run
            _stop(process)
    reader.join(timeout=1.0)
    duration = time.monotonic() - started
    if process.returncode != 0:
        last = f": {tail[-1]}" if tail else ""
        raise BeforeApplyFailed(
            f"MIGRATION_BEFORE_APPLY_COMMAND {argv[0]} exited {process.returncode}; nothing was applied{last}",
            exit_status=process.returncode,
            stderr=list(tail),
        )
    log.info("before_apply.finished", command=argv[0], duration_seconds=round(duration, 6))
    return duration


def _read_stderr(process: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    assert process.stderr is not None  # noqa: S101  (stderr=PIPE)
    log = logs.get_logger()
    for raw in process.stderr:
        line = logs.redact_text(raw.decode(errors="replace").rstrip("\r\n"))[:STDERR_LINE_MAX_CHARS]
        tail.append(line)
        log.info("before_apply.output", line=line)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the command's process group; SIGKILL if it is still there after a few seconds."""
    for sig, wait in ((signal.SIGTERM, KILL_AFTER_SECONDS), (signal.SIGKILL, KILL_AFTER_SECONDS)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
