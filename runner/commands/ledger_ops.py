"""Commands that record what an operator found or reviewed: ``accept`` and ``resolve``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from runner import checksum, database, drift, ledger
from runner.commands.ledger_checks import _rewound
from runner.commands.migrate import _migration_lock
from runner.commands.run import Run
from runner.drivers import Driver
from runner.errors import (
    ConfigError,
    ExitCode,
)
from runner.logs import get_logger


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
    engine = run.engine(run.target.url)
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
    engine = run.engine(run.target.url)
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
