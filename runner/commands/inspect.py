"""Read-only commands: ``check``, ``current``, ``wait``, ``history`` and ``config``."""

from __future__ import annotations

import json
from typing import Any

from runner import database, logs, polling
from runner.commands.ledger_checks import _judge_drift, _read_ledger, _unfinished_step
from runner.commands.migrate import _describe, _plan
from runner.commands.run import Run
from runner.errors import (
    ConfigError,
    DatabaseUnavailable,
    ExitCode,
    WaitTimeout,
)
from runner.logs import get_logger

_WAIT_FIRST_DELAY_SECONDS = 0.1


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
    engine = run.engine(run.target.url)
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


def current(run: Run) -> ExitCode:
    """Print the database's revisions, the heads and what is pending (or, with ``--output json``, the result)."""
    project = run.project()
    engine = run.engine(run.target.url)
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
    engine = run.engine(run.target.url)
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
    engine = run.engine(run.target.url)
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
        return ExitCode.OK
    table = [("started (UTC)", "direction", "outcome", "revision", "duration", "run", "where", "checksum")]
    for row in rows:
        duration = row.get("duration_seconds")
        table.append(
            (
                str(row["started_at"]),
                str(row["direction"]),
                str(row["outcome"]),
                str(row["revision"]),
                f"{duration:.3f} s" if isinstance(duration, float) else "-",
                str(row["run_id"]),
                "/".join(part for part in (row.get("namespace"), row.get("host")) if part) or "-",
                (row.get("checksum") or "-")[:12],
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out)
    return ExitCode.OK


def show_config(run: Run) -> ExitCode:
    """Print the effective settings as JSON; the database password is redacted.

    Without a URL in the settings, the project is loaded, so that one which
    configures its own database (Django's ``DATABASES``) shows it; a project
    that cannot load is shown as the URL's source.
    """
    if run.target.url_text is None:
        try:
            run.project()
        except ConfigError as error:
            run.target = run.target.without_url(error.message)
    json.dump(logs.redact_value(run.target.shown(run.settings)), run.stdout, indent=2)
    print(file=run.stdout)
    return ExitCode.OK
