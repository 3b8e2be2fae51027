"""The ledger's checks before a change: drift, adoption, a rewound version table, an unfinished step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Connection

from runner import checksum, database, drift, ledger, locks
from runner.commands.run import Run
from runner.drivers import Driver
from runner.errors import (
    InterruptedRevision,
    RevisionDrifted,
    VersionTableRewound,
)
from runner.logs import get_logger


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
        if locks.held_by_anyone(connection, run.target.url, key=run.lock_key(connection)):
            return row.revision
        raise _interrupted(book, row)
    return None
