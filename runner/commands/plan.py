"""``plan`` and ``plan --trace``: the pending revisions, their SQL, the locks it takes, without changing anything."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection

from runner import database, flags, logs, reading
from runner.commands.migrate import _migration_lock, _plan
from runner.commands.run import Run
from runner.drivers import Driver
from runner.errors import (
    ConfigError,
    ExitCode,
)
from runner.logs import get_logger


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
    engine = run.engine(run.target.url)
    with run.connect(engine) as connection:
        current = run.read_current(connection)
        pending = _plan(run, project, current, allow_unknown=False, upgrading=True)
        reader = _reader(run, project, connection, current) if pending else None
    traced = _rehearse(run, project) if pending and run.trace else None
    rendered = {r.revision: r for r in project.render(current, settings.target, run.target.url)} if pending else {}
    irreversible = dict(project.irreversible(pending))
    steps = []
    for step in pending:
        shown = rendered.get(step.revision)
        sql = shown.sql if shown else None
        not_rendered = shown.not_rendered if shown else "not rendered"
        read = sql
        if sql is None and traced is not None and traced[2].get(step.revision):
            # No offline SQL (the revision inspects the database): the statements the trace ran are read instead.
            read = ";\n".join(traced[2][step.revision])
            not_rendered = f"{not_rendered}; its flags are read from the statements plan --trace ran"
        accepted = flags.accepted_kinds(step.revision, project.source(step.revision), settings.accept_flags)
        found, opted = (
            reader.step(read or "", accepted=accepted, operations=project.breaking_operations(step.revision))
            if reader
            else ([], [])
        )
        steps.append(
            planning.PlannedStep(
                revision=step.revision,
                message=step.message,
                transactional=shown.transactional if shown else True,
                sql=sql,
                not_rendered=not_rendered,
                irreversible=irreversible.get(step.revision),
                flags=found,
                accepted=opted,
                trace=None if traced is None else traced[0].get(step.revision, []),
                not_traced=None if traced is None else traced[1].get(step.revision),
            )
        )
    # Redacted like the logs: a revision's own error, in not_rendered, may carry the URL.
    document = logs.redact_value(
        planning.document(
            traced=traced is not None,
            tool=project.tool,
            database=run.target.light_url.database_name,
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


def _reader(run: Run, project: Driver, connection: Connection, current: Sequence[str]) -> reading.Reader:
    """The flags' reader over the database as it is now, before any pending step."""
    settings = run.settings
    family = database.family(run.target.url)
    existing = flags.read_existing(
        connection,
        family,
        schema=run.version_table.schema,
        ignored=(run.version_table.name, settings.history_table),  # the tool's own tables
        lock_timeout=settings.ddl_lock_timeout > 0,
        release_columns=project.release_columns(current),
    )
    return reading.Reader(existing)


def _rehearse(
    run: Run, project: Driver
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], dict[str, list[str]]]:
    """``plan --trace``: the pending steps run under the lock and rolled back; per step, its statements' locks.

    Returns:
        Each step's traced statements (:func:`runner.trace.report`), why each step not run was not, and
        each step's statements whole (:func:`runner.trace.statements_by_revision`).

    Raises:
        ConfigError: not PostgreSQL, or production without ``MIGRATION_ALLOW_TRACE=true``.
    """
    from runner import trace  # noqa: PLC0415

    settings = run.settings
    if database.family(run.target.url) != "postgresql":
        raise ConfigError(
            f"plan --trace reads pg_locks, which only PostgreSQL has; {database.family(run.target.url)} cannot be "
            "traced (plan without --trace shows the SQL and its flags)"
        )
    run.refuse_in_production(
        allowed=settings.allow_trace,
        refusal="plan --trace holds the locks it measures while it runs, so it is refused in production unless "
        "MIGRATION_ALLOW_TRACE=true; trace a copy of the database instead",
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
    return trace.report(tracer.statements), dict(skipped), trace.statements_by_revision(tracer.statements)
