"""``verify``'s ``backward_compatible`` case: would pods of the running release still work after the new revisions?

During a rolling update the pods of the release before keep running against the
new schema until they are replaced (expand/contract). The revisions checked are
those after ``MIGRATION_VERIFY_RELEASED`` (the target production is at), or by
default the newest one the upgrade applies: in a pull request, the one it adds.

The upgrade case stops at the released state on its way up; there the schema is
read (:func:`runner.flags.read_existing`, with the running release's models where
the tool keeps them: Django's migration state), the SQL of the revisions after it
rendered, and read as ``plan`` reads it. Each ``backward_incompatible`` flag that
the revision does not accept (``MIGRATION_ACCEPT_FLAGS``, or a
``# migration-runner: accept backward_incompatible`` line in its file) fails the case.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import URL, Connection

from runner import database, flags, reading
from runner import verify as checks
from runner.commands.run import Run
from runner.drivers import Driver, Step

KIND = "backward_incompatible"


class Compatibility:
    """The ``backward_compatible`` case, read at the released state the upgrade stops at.

    Args:
        run: this run (settings).
        project: the driver.
        url: the migration URL, for rendering.
    """

    def __init__(self, run: Run, project: Driver, url: URL) -> None:
        self.run, self.project, self.url = run, project, url
        self.case = checks.Case("backward_compatible", "backward_compatible")
        self.flagged: list[str] = []
        self.checked: list[str] = []
        self.unread: list[str] = []  # checked revisions whose SQL cannot be rendered offline (they read data)
        self.not_read = "the upgrade did not reach the released state"

    def released_target(self, pending: Sequence[Step]) -> str | None:
        """The target the upgrade stops at before the checked revisions, or None: nothing to check."""
        if not pending:
            self.not_read = "nothing to upgrade: no revision to check"
            return None
        released = self.run.settings.verify_released
        return released if released is not None else self.project.step_target(pending[-1].revision, "below")

    def read_released(self, connection: Connection, newest: str) -> None:
        """At the released state: read the schema and the SQL of every revision after it, and judge them.

        Args:
            connection: the migration connection, outside a transaction.
            newest: the newest revision the upgrade applies (the one checked by default).
        """
        # reading(): the reads leave no transaction behind (on SQLite an open one would lock out the upgrade).
        with checks.Timer(self.case), database.reading(connection):
            current = self.run.read_current(connection)
            settings = self.run.settings
            after = self.project.pending(current, "heads")
            self.checked = [s.revision for s in after] if settings.verify_released is not None else [newest]
            existing = flags.read_existing(
                connection,
                database.family(connection.engine.url),
                schema=self.run.version_table.schema,
                ignored=(self.run.version_table.name, settings.history_table),
                lock_timeout=True,  # only the rolling-deploy kind is judged here
                release_columns=self.project.release_columns(current),
            )
            reader = reading.Reader(existing)
            for rendered in self.project.render(current, "heads", self.url):
                accepted = flags.accepted_kinds(
                    rendered.revision, self.project.source(rendered.revision), settings.accept_flags
                )
                found, _ = reader.step(
                    rendered.sql or "",
                    accepted=accepted,
                    operations=self.project.breaking_operations(rendered.revision),
                )
                if rendered.revision in self.checked and rendered.sql is None:
                    self.unread.append(f"{rendered.revision} ({rendered.not_rendered})")
                if rendered.revision in self.checked:
                    self.flagged += [f"{rendered.revision}: {f.detail}" for f in found if f.kind == KIND]
            self.not_read = ""

    def result(self) -> checks.Case:
        """The case: failed, naming each incompatible change; skipped when a checked revision could not be read.

        Passed otherwise, naming the revisions checked.
        """
        if self.not_read:
            self.case.skip(self.not_read)
        elif self.flagged:
            self.case.fail(
                f"{len(self.flagged)} change(s) break the release still running during a rolling update: "
                f"{self.flagged[0]}; for a deliberate contract step, set MIGRATION_ACCEPT_FLAGS=REVISION:{KIND} "
                f"or put '# migration-runner: accept {KIND}' in its file",
                self.flagged,
            )
        elif self.unread:  # never a pass for what could not be read
            self.case.skip(
                f"not checked: {self.unread[0]}; review it by hand (a revision that reads the database has no "
                "offline SQL to read)"
            )
            self.case.details = self.unread
        else:
            self.case.details = [f"checked: {', '.join(self.checked)}"]
        return self.case
