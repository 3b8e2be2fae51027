"""``verify``'s cases that change the database: the upgrade, ``models_match``, the stairway and no trace.

The upgrade applies every revision in one run of the tool, and records the schema as it
was before each (:meth:`Stairway._state`). The stairway then reverts them from the head
down and applies them again from the base up, each revision its own case. Consecutive
revisions that the tool reverts (or applies) in exactly that order go in one run too:
every run of ``env.py`` or ``migrate`` costs tens of milliseconds, and a history has
hundreds of steps. After each step, from the tool's own callback once it committed, the
schema is compared with the one before that revision; a step that leaves the database
anywhere but there ends its run, and the database is rebuilt below it (:meth:`Stairway._rebuild`).

On PostgreSQL the schema between steps is a fingerprint of the catalog
(:func:`runner.catalog.fingerprint`, one query); only a difference costs the full
comparison, made between the database as the downgrade left it and the same database
rebuilt. Elsewhere, and with ``--allow-nonempty`` (no rebuild), the full snapshot is kept
for every step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from runner import catalog, database, drivers, locks
from runner import verify as checks
from runner.commands.compatible import Compatibility
from runner.commands.migrate import _apply
from runner.commands.run import Run
from runner.drivers import Applied, Driver, Step
from runner.errors import ConfigError, MigrationFailed
from runner.logs import get_logger


class _Changed(Exception):
    """From a step's callback: the schema after reverting ``revision`` is not the one before it was applied."""

    def __init__(self, revision: str, now: Any) -> None:
        super().__init__(revision)
        self.revision, self.now = revision, now


class Stairway:
    """The cases of ``verify`` that change the database, run in order under one lock.

    Args:
        run: the run (settings, ledger, report).
        project: the driver.
        connection: the migration connection, outside a transaction.
        held: the lock.
        url: the migration URL, for the driver.
        data: the revision data by revision id (``MIGRATION_VERIFY_DATA_DIR``).
    """

    def __init__(
        self,
        run: Run,
        project: Driver,
        connection: Connection,
        held: locks.HeldLock,
        url: URL,
        *,
        data: dict[str, Path],
    ) -> None:
        self.run, self.project, self.connection, self.held, self.url = run, project, connection, held, url
        self.data = data
        self.schema = run.version_table.schema
        self.ignored = (run.version_table.name, run.settings.history_table)
        self.kept = catalog.baseline(connection)  # what a rebuild keeps: the schemas and extensions there now
        # The full snapshot at every step where a fingerprint cannot stand in for it (see the module's docstring).
        self.exact = run.settings.verify_allow_nonempty or database.family(connection.engine.url) != "postgresql"
        self.up_book = run.ledger()
        self.down_book = run.ledger()
        self.down_book.direction = "down"
        self._prepare_ledgers()
        self.before: dict[str, Any] = {}  # revision -> the schema (or its fingerprint) before it was applied
        self.order: list[Step] = []
        self.position: dict[str, int] = {}  # revision -> its index in order
        self.at_start: tuple[str, ...] = ()  # the database's revisions before the upgrade case
        self.not_again: dict[str, str] = {}  # revision -> why its up case does not follow its down case
        self.up_cases: dict[str, checks.Case] = {}  # revision -> its up case, run during the way down
        self.left_behind: list[str] = []
        self.reported: set[str] = set()  # each difference once, at the revision whose downgrade left it
        self.rebuilds: list[checks.Rebuild] = []
        self.stopped = ""  # why the stairway cannot go on: a rebuild that failed, or one refused
        self.irreversible: dict[str, str | None] = {}  # revision -> why its downgrade cannot run, read from its source

    def _prepare_ledgers(self) -> None:
        self.up_book.prepare(self.held.connection or self.connection)
        self.down_book.prepare(self.held.connection or self.connection)

    def _step(self, target: str, direction: str, **hooks: Any) -> None:
        book = self.up_book if direction == "up" else self.down_book
        _apply(self.run, self.project, self.connection, self.held, book, target=target, direction=direction, **hooks)

    def _up(self, revision: str) -> None:
        self._step(self.project.step_target(revision, "up"), "up")

    def _case(self, step: Step, direction: str) -> checks.Case:
        name = f"up_down_consistency[{step.revision} {direction}]"
        return checks.Case("up_down_consistency", name, revision=step.revision, direction=direction)

    def _snapshot(self) -> Any:
        return checks.snapshot(self.connection, self.schema, self.ignored)

    def _state(self) -> Any:
        """What a step is compared by: the catalog's fingerprint on PostgreSQL, else the full snapshot."""
        return self._snapshot() if self.exact else catalog.fingerprint(self.connection, self.ignored)

    def _put_data_in_place(self, revision: str) -> None:
        """The revision data for ``revision``, if any (``MIGRATION_VERIFY_DATA_DIR``); raises MigrationFailed."""
        if revision in self.data:
            from runner import seed_data  # noqa: PLC0415  (only with the setting)

            with database.losing_connection_raises():
                seed_data.put_in_place(self.connection, revision, self.data[revision])
            get_logger().info("verify.data_put_in_place", revision=revision, file=self.data[revision].name)

    def upgrade(self) -> checks.Case:
        """``upgrade``: base (or where the database is) to the heads in one run, the schema kept before each."""
        case = checks.Case("upgrade", "upgrade")
        with checks.Timer(case):
            try:
                self.at_start = self.run.read_current(self.connection)
                pending = {step.revision: step for step in self.project.pending(self.at_start, "heads")}

                def before(revision: str) -> None:
                    self.before[revision] = self._state()
                    self._put_data_in_place(revision)

                def after(applied: Applied) -> None:
                    self.order.append(pending[applied.revision])

                if pending:
                    self._step("heads", "up", before=before, after=after)
            except MigrationFailed as error:
                case.fail(f"revision {error.revision} failed on the way up: {error.message}")
        self.position = {step.revision: index for index, step in enumerate(self.order)}
        return case

    def models_match(self) -> checks.Case:
        """``models_match``: the models against the migrated schema (the driver's check)."""
        case = checks.Case("models_match", "models_match")
        with checks.Timer(case):
            status, lines = self.project.models_match(self.connection, self.url, self.ignored)
            if status == "failed" and lines[0].startswith(drivers.NOT_REGISTERED):
                case.fail(f"a model is {lines[0]}; import its module in env.py (or in its package)", lines)
            elif status == "failed" and lines[0].startswith(drivers.SCHEMA_DIFFERS):
                case.fail(f"{lines[0]}: the migrations' SQL did otherwise than their state says (a RunSQL?)", lines)
            elif status == "failed":
                case.fail(f"the models differ from the migrated schema; a new revision would {lines[0]}", lines)
            elif status == "skipped":
                case.skip(lines[0])
            else:  # passed; a part of the check that could not run says why
                case.details = lines
        return case

    def backward_compatible(self) -> checks.Case:
        """``backward_compatible`` (:mod:`runner.commands.compatible`), run last.

        From the heads down to the released state, where the schema is read, then up to the heads
        again. Where the way down fails (a downgrade that raises, or is refused), or the stairway left
        the database elsewhere, the scratch database is rebuilt at the released state instead.
        """
        compatible = Compatibility(self.run, self.project, self.url)
        stop = compatible.released_target(self.order)
        if stop is None:
            return compatible.result()
        try:
            current = self.run.read_current(self.connection)
            if self.project.pending(current, "heads"):
                raise MigrationFailed("the stairway left the database below the heads", revision="", sqlstate=None)
            if self.project.reverting(current, stop):
                self._step(stop, "down")
        except (MigrationFailed, ConfigError) as error:
            released = set(self.project.target_revisions(stop))
            count = max((self.position[r] + 1 for r in released if r in self.position), default=0)
            self._rebuild(count, after=f"backward_compatible: going down to {stop} failed: {error}")
            if self.stopped:
                compatible.not_read = self.stopped
                return compatible.result()
        compatible.read_released(self.connection, newest=self.order[-1].revision)
        case = compatible.result()
        try:
            if self.project.pending(self.run.read_current(self.connection), "heads"):
                self._step("heads", "up")
        except MigrationFailed as error:  # the case stands; the database is left where it is, and says so
            case.details.append(f"the scratch database stays at {stop}: going up again failed: {error.message}")
        return case

    # The way down.

    def down(self) -> list[checks.Case]:
        """The stairway down: each revision from the head, compared afterwards with the schema before it.

        The last applied goes first, so what depends on a revision is reverted before it.
        After a step that leaves the database elsewhere than just below it, the database
        is rebuilt there (:meth:`_rebuild`) and the stairway goes on.
        """
        cases: list[checks.Case] = []
        index = len(self.order) - 1
        while index >= 0:
            if self.stopped:
                cases.append(self._case(self.order[index], "down"))
                cases[-1].skip(self.stopped)
                index -= 1
                continue
            low = self._plain_run_down(index)
            if low is None:
                case = self._case(self.order[index], "down")
                cases.append(case)
                with checks.Timer(case):
                    self._down_alone(self.order[index], case)
                index -= 1
            else:
                index = self._down_together(index, low, cases)
        return cases

    def _why_not_plain(self, step: Step) -> str | None:
        """Why ``step`` is reverted by itself (a downgrade that raises, or one declared empty); None if plain.

        A downgrade that does nothing, undeclared and unlisted, is plain: it is judged by its effect.
        """
        if step.revision not in self.irreversible:  # the source is read once per revision
            self.irreversible[step.revision] = dict(self.project.irreversible([step])).get(step.revision)
        why = self.irreversible[step.revision]
        if why is None:
            return None
        if why == drivers.DOES_NOTHING and step.revision in self.run.settings.noop_downgrades:
            return "declared"
        if why == drivers.DOES_NOTHING and step.revision not in self.run.settings.verify_irreversible:
            return None
        return why

    def _plain_run_down(self, top: int) -> int | None:
        """The lowest index ``low`` such that one downgrade reverts exactly ``order[top]`` down to ``order[low]``.

        Only plain steps (:meth:`_why_not_plain`), and only where the tool's own plan is that
        sequence; the longest such run is tried first, then halves of it. None: revert it alone.
        """
        if self._why_not_plain(self.order[top]) is not None:
            return None
        low = top
        while low > 0 and self._why_not_plain(self.order[low - 1]) is None:
            low -= 1
        current = self.run.read_current(self.connection)
        while True:
            target = self.project.step_target(self.order[low].revision, "below")
            if self._planned(self.project.reverting, current, target) == [
                step.revision for step in reversed(self.order[low : top + 1])
            ]:
                return low
            if low == top:
                return None
            low = max(low + 1, (low + top + 1) // 2)

    @staticmethod
    def _planned(plan: Any, current: tuple[str, ...], target: str) -> list[str] | None:
        """The steps the tool's ``plan`` (``pending`` or ``reverting``) takes to ``target``; None if it cannot say.

        Alembic refuses some walks (``Ambiguous walk`` from a merge point); then the steps go one at a time.
        """
        try:
            return [step.revision for step in plan(current, target)]
        except ConfigError:
            return None

    def _down_together(self, top: int, low: int, cases: list[checks.Case]) -> int:
        """Revert ``order[top]`` down to ``order[low]`` in one run; returns the next index the way down goes on at."""
        running: dict[str, checks.Case] = {}

        def before(revision: str) -> None:
            running[revision] = self._case(self.order[self.position[revision]], "down")
            cases.append(running[revision])

        def after(applied: Applied) -> None:
            running[applied.revision].seconds = applied.duration_seconds
            now = self._state()
            if now != self.before[applied.revision]:
                raise _Changed(applied.revision, now)

        target = self.project.step_target(self.order[low].revision, "below")
        try:
            self._step(target, "down", before=before, after=after)
        except _Changed as changed:
            index = self.position[changed.revision]
            self._judge_trace(self.order[index], running[changed.revision], changed.now)
            return index - 1
        except MigrationFailed as error:
            index = self.position.get(error.revision or "", top)
            step = self.order[index]
            case = running.get(step.revision) or self._case(step, "down")
            if case not in cases:
                cases.append(case)
            self._downgrade_failed(step, case, error)
            return index - 1
        return low - 1

    def _down_alone(self, step: Step, case: checks.Case) -> None:
        """Revert ``step`` by itself and judge it; the database ends just below it, or is rebuilt there."""
        index = self.position[step.revision]
        why = self._why_not_plain(step)
        if why is not None and why != "declared":
            if step.revision in self.run.settings.verify_irreversible:
                case.skip(f"cannot be reverted ({why}), as MIGRATION_VERIFY_IRREVERSIBLE says")
            elif why == drivers.NOT_IMPLEMENTED:  # irreversible by design, as pytest-alembic reads it too
                case.skip(
                    f"cannot be reverted ({why}): irreversible by design; "
                    "list it in MIGRATION_VERIFY_IRREVERSIBLE to say so"
                )
            else:
                case.fail(
                    f"revision {step.revision} cannot be reverted ({why}); "
                    "list it in MIGRATION_VERIFY_IRREVERSIBLE if that is by design"
                )
            self.not_again[step.revision] = f"its downgrade cannot run ({why})"
            self._rebuild(index, after=f"the downgrade of {step.revision}")
            return
        target = self.project.step_target(step.revision, "down")
        reverts = [s.revision for s in self.project.reverting(self.run.read_current(self.connection), target)]
        if reverts != [step.revision]:  # e.g. one side of a Django branch
            case.skip(f"no downgrade reverts {step.revision} alone (its target {target} reverts {', '.join(reverts)})")
            self.not_again[step.revision] = "no downgrade reverts it alone"
            self._rebuild(index, after=f"the downgrade of {step.revision}")
            return
        try:
            self._step(target, "down")
        except MigrationFailed as error:
            self._downgrade_failed(step, case, error)
            return
        if why == "declared":
            self._declared_noop(step)
            return
        now = self._state()
        if now != self.before[step.revision]:
            self._judge_trace(step, case, now)

    def _downgrade_failed(self, step: Step, case: checks.Case, error: MigrationFailed) -> None:
        if step.revision in self.run.settings.verify_irreversible:  # a shape of raising the source reading missed
            case.skip(f"its downgrade raised, as MIGRATION_VERIFY_IRREVERSIBLE says it must: {error.message}")
        else:
            case.fail(f"the downgrade of {step.revision} failed: {error.message}")
        self.not_again[step.revision] = "its downgrade failed"
        self._rebuild(self.position[step.revision], after=f"the downgrade of {step.revision}")

    def _declared_noop(self, step: Step) -> None:
        """A downgrade empty on purpose: what its upgrade made stays, so it is applied again at once, then rebuilt.

        Its up case is that application (on the database its upgrade already changed); the
        rebuild below it takes away what it keeps, so the steps below are judged as usual.
        """
        up = self._case(step, "up")
        self.up_cases[step.revision] = up
        with checks.Timer(up):
            try:
                self._up(step.revision)
            except MigrationFailed as error:
                up.fail(f"the upgrade of {step.revision} after its (empty) downgrade failed: {error.message}")
        self._rebuild(self.position[step.revision], after=f"the empty downgrade of {step.revision}")

    def _judge_trace(self, step: Step, case: checks.Case, now: Any) -> None:
        """The schema after reverting ``step`` differs from the one before it: say how, rebuild just below it."""
        index = self.position[step.revision]
        after = f"the downgrade of {step.revision}"
        if self.exact:
            left = checks.differences(self.before[step.revision], now)
            if left:
                self._rebuild(index, after=after)
        else:  # the fingerprints differ: the database as it was left, then the same database rebuilt
            as_left = self._snapshot()
            self._rebuild(index, after=after)
            left = checks.differences(self._snapshot(), as_left) if not self.stopped else []
            if self.stopped:
                left = ["the schema is not what it was before it was applied (the catalog's fingerprint differs)"]
        left = [line for line in left if line not in self.reported]  # left by a revision above: reported there
        self.reported.update(left)
        if not left:
            return
        self._why_not_plain(step)
        if self.irreversible[step.revision] == drivers.DOES_NOTHING:
            # Its upgrade changed the schema and its downgrade did not undo it: the no-trace failure, named as such.
            case.fail(f"the downgrade of {step.revision} does nothing, and its upgrade changed the schema: {left[0]}")
            self.left_behind += [f"{step.revision}: {line} (its downgrade does nothing)" for line in left]
        else:
            self.left_behind += [f"{step.revision}: {line}" for line in left]
        # Applying it again would fail on what it left, under the wrong check.
        self.not_again[step.revision] = f"its downgrade left the schema changed: {left[0]} (downgrade_leaves_no_trace)"

    # The way up.

    def up_again(self) -> list[checks.Case]:
        """The stairway up: each revision applied again, base first, on what its own downgrade left.

        A revision whose down case did not end just below it is applied without a case of its
        own (its up case is skipped, saying why), so the ones above it still get theirs.
        """
        cases: list[checks.Case] = []
        index = 0
        while index < len(self.order):
            if self.stopped:
                cases.append(self._case(self.order[index], "up"))
                cases[-1].skip(self.stopped)
                index += 1
                continue
            index = self._up_together(index, self._plain_run_up(index), cases)
        return cases

    def _plain_run_up(self, bottom: int) -> int:
        """The highest index ``high`` such that one upgrade applies exactly ``order[bottom]`` up to ``order[high]``."""
        current = self.run.read_current(self.connection)
        high = len(self.order) - 1
        while high > bottom:
            target = self.project.step_target(self.order[high].revision, "up")
            if self._planned(self.project.pending, current, target) == [
                step.revision for step in self.order[bottom : high + 1]
            ]:
                return high
            high = max(bottom, (bottom + high) // 2)
        return bottom

    def _up_together(self, bottom: int, high: int, cases: list[checks.Case]) -> int:
        """Apply ``order[bottom]`` up to ``order[high]`` in one run; returns the next index the way up goes on at."""
        running: dict[str, checks.Case] = {}

        def before(revision: str) -> None:
            step = self.order[self.position[revision]]
            case = self.up_cases.get(revision) or self._case(step, "up")
            if revision in self.not_again:
                case.skip(f"not applied again after its downgrade: {self.not_again[revision]}")
            running[revision] = case
            cases.append(case)

        def after(applied: Applied) -> None:
            case = running[applied.revision]
            if applied.revision not in self.up_cases:  # a declared no-op's case was timed on the way down
                case.seconds = applied.duration_seconds

        try:
            self._step(self.project.step_target(self.order[high].revision, "up"), "up", before=before, after=after)
        except MigrationFailed as error:
            index = self.position.get(error.revision or "", bottom)
            step = self.order[index]
            case = running.get(step.revision)
            if case is None:
                case = self._case(step, "up")
                cases.append(case)
            if case.status == "passed":
                case.fail(f"the upgrade of {step.revision} after its downgrade failed: {error.message}")
            self._rebuild(index + 1, after=f"the upgrade of {step.revision} applied again")
            return index + 1
        return high + 1

    def _rebuild(self, count: int, *, after: str) -> None:
        """Drop everything, then apply again the first ``count`` revisions of the upgrade (and what preceded it).

        Sets :attr:`stopped`, with the reason, when the database cannot be rebuilt: it held
        something before ``verify`` (``--allow-nonempty``), or the upgrade failed this time.
        """
        at = self.order[count - 1].revision if count else "base"
        if self.run.settings.verify_allow_nonempty:
            self.stopped = (
                f"the stairway cannot go on below {after}: the database held something before verify "
                "(--allow-nonempty), so verify does not drop everything to rebuild it"
            )
            return
        rebuild = checks.Rebuild(at=at, after=after)
        started = time.monotonic()
        wanted = {step.revision for step in self.order[:count]} | set(self.project.applied_revisions(self.at_start))
        try:
            with database.losing_connection_raises():
                catalog.drop_everything(self.connection, self.kept)
                self._prepare_ledgers()
                for revision in self.at_start:
                    self._up(revision)
                if self.data:  # as the upgrade case ran: each revision's data just before it
                    for step in self.order[:count]:
                        self._put_data_in_place(step.revision)
                        self._up(step.revision)
                # The newest first: applying a revision applies what it depends on, so most need no call of their own.
                for step in reversed(self.order[:count]):
                    if step.revision not in self.project.applied_revisions(self.run.read_current(self.connection)):
                        self._up(step.revision)
            applied = set(self.project.applied_revisions(self.run.read_current(self.connection)))
            if applied != wanted:
                extra, missing = sorted(applied - wanted), sorted(wanted - applied)
                reached = f"{', '.join(extra)} too" if extra else f"not {', '.join(missing)}"
                raise MigrationFailed(f"the upgrade reached {reached}", revision=at, sqlstate=None)
        except (MigrationFailed, sa.exc.DBAPIError) as error:
            message = error.message if isinstance(error, MigrationFailed) else database.error_message(error)
            self.stopped = f"the scratch database could not be rebuilt at {at} after {after}: {message}"
            rebuild.failed = message
        rebuild.seconds = time.monotonic() - started
        self.rebuilds.append(rebuild)
        get_logger().info("verify.rebuilt", at=at, after=after, seconds=round(rebuild.seconds, 3))

    def no_trace(self) -> checks.Case:
        """``downgrade_leaves_no_trace``: what the stairway down found left behind (or missing)."""
        case = checks.Case("downgrade_leaves_no_trace", "downgrade_leaves_no_trace")
        if self.left_behind:
            revision, what = self.left_behind[0].split(": ", 1)
            case.fail(f"after the downgrade of {revision}, {what}", self.left_behind)
        elif not self.order:
            case.skip("no revision was downgraded")
        return case


def verify_steps(
    run: Run, project: Driver, connection: Connection, held: locks.HeldLock, url: URL, *, data: dict[str, Path]
) -> tuple[list[checks.Case], list[checks.Rebuild]]:
    """``upgrade``, ``models_match``, the stairway and ``downgrade_leaves_no_trace``, in that order; the rebuilds."""
    stairway = Stairway(run, project, connection, held, url, data=data)
    upgraded = stairway.upgrade()
    if upgraded.status == "failed":
        skipped = [
            checks.Case(check, check) for check in ("models_match", "backward_compatible", "downgrade_leaves_no_trace")
        ]
        for case in skipped:
            case.skip("the upgrade failed")
        return [upgraded, *skipped], stairway.rebuilds
    cases = [upgraded, stairway.models_match(), *stairway.down(), *stairway.up_again(), stairway.no_trace()]
    cases.insert(2, stairway.backward_compatible())  # run last: it goes down to the released state and up again
    run.read_current(connection)
    return cases, stairway.rebuilds
