"""``verify``: the CI checks on a scratch database; the engine of the checks is :mod:`runner.verify`."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection

from runner import catalog, database, drivers, locks, logs
from runner.commands.migrate import _apply, _migration_lock
from runner.commands.run import Run
from runner.drivers import Driver, Step
from runner.errors import (
    ConfigError,
    ExitCode,
    MigrationFailed,
)
from runner.logs import get_logger

# How many of the objects that make a database no scratch database the refusal names.
GUARD_SHOWS = 10


def verify(run: Run) -> ExitCode:
    """The CI checks on a scratch database (:mod:`runner.verify`): one head, upgrade, models, the stairway, no trace.

    Prints the report on stdout (text, ``--output json`` or ``markdown``) and, with
    ``--junit-xml PATH``, writes it as JUnit XML.

    Returns:
        ``ExitCode.OK`` when no case failed (skipped ones do not fail), ``ExitCode.NOT_AT_TARGET`` (1) otherwise.

    Raises:
        ConfigError: the database holds anything already, in any schema the connection sees
            (:func:`runner.catalog.application_objects`), unless ``--allow-nonempty``, which the
            ``production`` environment refuses.
        DatabaseUnavailable, LockTimeout.
    """
    from runner import verify as checks  # noqa: PLC0415

    settings = run.settings
    if settings.environment == "production" and settings.verify_allow_nonempty:
        raise ConfigError(
            "verify --allow-nonempty is refused in the production environment: verify reverts every revision, "
            "and a database with tables in production holds data; run it on a scratch database with "
            "MIGRATION_ENVIRONMENT=test; nothing was changed"
        )
    project = run.project()
    _check_verify_settings(project, settings.verify_heads, settings.verify_irreversible, settings.noop_downgrades)
    data = _read_data_dir(project, settings.verify_data_dir)
    url = run.migration_url()
    engine = run.engine(url)
    ignored = (run.version_table.name, settings.history_table)
    cases: list[checks.Case] = []
    rebuilds: list[checks.Rebuild] = []
    with run.connect(engine) as connection, database.losing_connection_raises():
        found = catalog.application_objects(connection, ignored, limit=GUARD_SHOWS + 1)
        if found and not settings.verify_allow_nonempty:
            shown = ", ".join(found[:GUARD_SHOWS]) + (", and more" if len(found) > GUARD_SHOWS else "")
            raise ConfigError(
                f"verify needs a scratch database, and this one holds {shown}; point MIGRATION_DATABASE_URL at "
                "an empty database (a CI service container), or pass --allow-nonempty; nothing was changed"
            )
        cases.append(_single_head(project, settings.verify_heads))
        with _migration_lock(run, connection) as held:
            if cases[0].status == "passed" or settings.verify_heads is not None:
                cases += _verify_steps(run, project, connection, held, url, rebuilds=rebuilds, data=data)
            else:
                for check in CHECKS_AFTER_HEADS:
                    cases.append(checks.Case(check, check))
                    cases[-1].skip("several heads: merge them first")
    code = ExitCode.NOT_AT_TARGET if any(case.status == "failed" for case in cases) else ExitCode.OK
    # Redacted like the logs: a revision's own error, in a case's message, may carry the URL.
    report = logs.redact_value(
        checks.document(
            tool=project.tool,
            database=run.target.light_url.database_name,
            cases=cases,
            exit_code=code,
            rebuilds=rebuilds,
        )
    )
    if settings.junit_xml is not None:
        settings.junit_xml.write_bytes(checks.junit(report))
    if settings.output == "json":
        run.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        run.stdout.write(checks.markdown(report) if settings.output == "markdown" else checks.text(report))
    run.stdout.flush()
    get_logger().info("verify.finished", passed=report["passed"], failed=report["failed"], skipped=report["skipped"])
    return code


def _check_verify_settings(
    project: Driver, heads: Sequence[str] | None, irreversible: Sequence[str], noop: Sequence[str] = ()
) -> None:
    """The revisions these settings name exist (a typo is 78).

    ``MIGRATION_VERIFY_HEADS``, ``MIGRATION_VERIFY_IRREVERSIBLE`` and ``MIGRATION_NOOP_DOWNGRADES``.

    Raises:
        ConfigError: an empty heads list, or a name that is no revision of the project.
    """
    if heads is not None and not heads:
        raise ConfigError("MIGRATION_VERIFY_HEADS is empty: list the heads you mean to have, or unset it")
    known = {step.revision for step in project.pending((), "heads")}
    named = (
        ("MIGRATION_VERIFY_HEADS", heads or ()),
        ("MIGRATION_VERIFY_IRREVERSIBLE", irreversible),
        ("MIGRATION_NOOP_DOWNGRADES", noop),
    )
    for name, values in named:
        unknown = [value for value in values if value not in known]
        if unknown:
            example = min(known, default="none")
            raise ConfigError(
                f"{name} names {', '.join(unknown)}, which this project has no revision of "
                f"(they are written like {example}); nothing was changed"
            )


def _read_data_dir(project: Driver, directory: Path | None) -> dict[str, Path]:
    """``MIGRATION_VERIFY_DATA_DIR``'s files by revision id (:func:`runner.seed_data.read_directory`); 78 if bad."""
    if directory is None:
        return {}
    from runner import seed_data  # noqa: PLC0415  (only with the setting)

    return seed_data.read_directory(directory, {step.revision for step in project.pending((), "heads")})


CHECKS_AFTER_HEADS = ("upgrade", "models_match", "up_down_consistency", "downgrade_leaves_no_trace")


def _single_head(project: Driver, expected: Sequence[str] | None) -> Any:
    from runner import verify as checks  # noqa: PLC0415

    case = checks.Case("single_head", "single_head")
    with checks.Timer(case):
        heads = sorted(project.heads())
        diverged = project.diverged()
        if expected is not None and sorted(expected) != heads:
            case.fail(f"the heads are {', '.join(heads)}, not MIGRATION_VERIFY_HEADS={','.join(expected)}", heads)
        elif expected is None and diverged:
            case.fail(
                f"{len(diverged)} heads: {', '.join(diverged)}; run `{project.merge_command}` to join them "
                "(or list the heads you mean to have in MIGRATION_VERIFY_HEADS)",
                diverged,
            )
    return case


class _Verifier:
    """The cases of ``verify`` that change the database, run in order under one lock.

    The upgrade goes one revision at a time and keeps the schema as it was before
    each; the stairway then reverts them from the head down, comparing each
    revert with that schema, and applies them again from the base up. A step that
    leaves the database anywhere but where the stairway expects it (a downgrade that
    fails, raises by design, cannot revert its revision alone or leaves a trace; an
    upgrade that fails when applied again) is followed by a rebuild: everything is
    dropped and the revisions below it applied again, so every revision still gets
    its own down and up cases.
    """

    def __init__(self, run: Run, project: Driver, connection: Connection, held: locks.HeldLock, url: URL) -> None:
        from runner import verify as checks  # noqa: PLC0415

        self.checks = checks
        self.run, self.project, self.connection, self.held, self.url = run, project, connection, held, url
        self.schema = run.version_table.schema
        self.ignored = (run.version_table.name, run.settings.history_table)
        self.kept = catalog.baseline(connection)  # what a rebuild keeps: the schemas and extensions there now
        self.up_book = run.ledger()
        self.down_book = run.ledger()
        self.down_book.direction = "down"
        self._prepare_ledgers()
        self.before: dict[str, Any] = {}  # revision -> the schema before it was applied
        self.order: list[Step] = []
        self.at_start: tuple[str, ...] = ()  # the database's revisions before the upgrade case
        self.not_again: dict[str, str] = {}  # revision -> why its up case does not follow its down case
        self.left_behind: list[str] = []
        self.reported: set[str] = set()  # each difference once, at the revision whose downgrade left it
        self.rebuilds: list[checks.Rebuild] = []
        self.stopped = ""  # why the stairway cannot go on: a rebuild that failed, or one refused
        self.data: dict[str, Path] = {}  # revision -> its data file, put in place just before it on the way up

    def _prepare_ledgers(self) -> None:
        self.up_book.prepare(self.held.connection or self.connection)
        self.down_book.prepare(self.held.connection or self.connection)

    def _step(self, target: str, direction: str) -> None:
        book = self.up_book if direction == "up" else self.down_book
        _apply(self.run, self.project, self.connection, self.held, book, target=target, direction=direction)

    def _up(self, revision: str) -> None:
        self._step(self.project.step_target(revision, "up"), "up")

    def _stairway_case(self, step: Step, direction: str) -> Any:
        name = f"up_down_consistency[{step.revision} {direction}]"
        return self.checks.Case("up_down_consistency", name, revision=step.revision, direction=direction)

    def _snapshot(self) -> Any:
        return self.checks.snapshot(self.connection, self.schema, self.ignored)

    def upgrade(self) -> Any:
        """``upgrade``: base (or where the database is) to the heads, one revision at a time."""
        case = self.checks.Case("upgrade", "upgrade")
        with self.checks.Timer(case):
            try:
                self.at_start = self.run.read_current(self.connection)
                for step in self.project.pending(self.at_start, "heads"):
                    self.before[step.revision] = self._snapshot()
                    self._put_data_in_place(step.revision)
                    self._up(step.revision)
                    self.order.append(step)
            except MigrationFailed as error:
                case.fail(f"revision {error.revision} failed on the way up: {error.message}")
        return case

    def _put_data_in_place(self, revision: str) -> None:
        """The revision data for ``revision``, if any (``MIGRATION_VERIFY_DATA_DIR``); raises MigrationFailed."""
        if revision in self.data:
            from runner import seed_data  # noqa: PLC0415  (only with the setting)

            with database.losing_connection_raises():
                seed_data.put_in_place(self.connection, revision, self.data[revision])
            get_logger().info("verify.data_put_in_place", revision=revision, file=self.data[revision].name)

    def models_match(self) -> Any:
        """``models_match``: the models against the migrated schema (the driver's check)."""
        case = self.checks.Case("models_match", "models_match")
        with self.checks.Timer(case):
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

    def down(self) -> list[Any]:
        """The stairway down: each revision from the head, compared afterwards with the schema before it.

        The last applied goes first, so what depends on a revision is reverted before it.
        After a step that leaves the database elsewhere than just below it, the database
        is rebuilt there (:meth:`_rebuild`) and the stairway goes on.
        """
        cases = []
        for index in reversed(range(len(self.order))):
            step = self.order[index]
            case = self._stairway_case(step, "down")
            cases.append(case)
            if self.stopped:
                case.skip(self.stopped)
                continue
            with self.checks.Timer(case):
                where_expected = self._down_one(step, case)
            if not where_expected:
                self._rebuild(index, after=f"the downgrade of {step.revision}")
        return cases

    def _down_one(self, step: Step, case: Any) -> bool:
        """Revert ``step`` alone and judge it; ``False`` when the database is not now just below it."""
        excepted = set(self.run.settings.verify_irreversible)
        why = dict(self.project.irreversible([step])).get(step.revision)
        # Declared empty on purpose: reverted as downgrade would, what its upgrade made stays, and it is applied again.
        declared = why == drivers.DOES_NOTHING and step.revision in self.run.settings.noop_downgrades
        # A revert that does nothing is judged by its effect (below) unless listed: right under a data-only upgrade.
        judged_by_effect = why == drivers.DOES_NOTHING and step.revision not in excepted and not declared
        if why is not None and not judged_by_effect and not declared:
            if step.revision in excepted:
                case.skip(f"cannot be reverted ({why}), as MIGRATION_VERIFY_IRREVERSIBLE says")
            else:
                case.fail(
                    f"revision {step.revision} cannot be reverted ({why}); "
                    "list it in MIGRATION_VERIFY_IRREVERSIBLE if that is by design"
                )
            self.not_again[step.revision] = f"its downgrade cannot run ({why})"
            return False
        target = self.project.step_target(step.revision, "down")
        reverts = [s.revision for s in self.project.reverting(self.run.read_current(self.connection), target)]
        if reverts != [step.revision]:  # e.g. one side of a Django branch
            case.skip(f"no downgrade reverts {step.revision} alone (its target {target} reverts {', '.join(reverts)})")
            self.not_again[step.revision] = "no downgrade reverts it alone"
            return False
        try:
            self._step(target, "down")
        except MigrationFailed as error:
            if step.revision in excepted:  # a shape of raising that reading the source did not see
                case.skip(f"its downgrade raised, as MIGRATION_VERIFY_IRREVERSIBLE says it must: {error.message}")
            else:
                case.fail(f"the downgrade of {step.revision} failed: {error.message}")
            self.not_again[step.revision] = "its downgrade failed"
            return False
        left = self.checks.differences(self.before[step.revision], self._snapshot())
        left = [line for line in left if line not in self.reported]  # left by a revision above: reported there
        self.reported.update(left)
        if declared or not left:  # a declared no-op's upgrade is meant to stay: no trace to report, here or below
            return True
        if judged_by_effect:
            # Its upgrade changed the schema and its downgrade did not undo it: the no-trace failure, named as such.
            case.fail(f"the downgrade of {step.revision} does nothing, and its upgrade changed the schema: {left[0]}")
            self.left_behind += [f"{step.revision}: {line} (its downgrade does nothing)" for line in left]
        else:
            self.left_behind += [f"{step.revision}: {line}" for line in left]
        # Applying it again would fail on what it left, under the wrong check; below it, the trace would mislead.
        self.not_again[step.revision] = f"its downgrade left the schema changed: {left[0]} (downgrade_leaves_no_trace)"
        return False

    def up_again(self) -> list[Any]:
        """The stairway up: each revision applied again, base first, on what its own downgrade left.

        A revision whose down case did not end just below it is applied without a case
        of its own (its up case is skipped, saying why), so the ones above it still get theirs.
        """
        cases = []
        for index, step in enumerate(self.order):
            case = self._stairway_case(step, "up")
            cases.append(case)
            if self.stopped:
                case.skip(self.stopped)
                continue
            why_not = self.not_again.get(step.revision)
            if why_not is not None:
                case.skip(f"not applied again after its downgrade: {why_not}")
            with self.checks.Timer(case):
                try:
                    self._up(step.revision)
                except MigrationFailed as error:
                    if why_not is None:
                        case.fail(f"the upgrade of {step.revision} after its downgrade failed: {error.message}")
                    self._rebuild(index + 1, after=f"the upgrade of {step.revision} applied again")
        return cases

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
        rebuild = self.checks.Rebuild(at=at, after=after)
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

    def no_trace(self) -> Any:
        """``downgrade_leaves_no_trace``: what the stairway down found left behind (or missing)."""
        case = self.checks.Case("downgrade_leaves_no_trace", "downgrade_leaves_no_trace")
        if self.left_behind:
            revision, what = self.left_behind[0].split(": ", 1)
            case.fail(f"after the downgrade of {revision}, {what}", self.left_behind)
        elif not self.order:
            case.skip("no revision was downgraded")
        return case


def _verify_steps(
    run: Run,
    project: Driver,
    connection: Connection,
    held: locks.HeldLock,
    url: URL,
    *,
    rebuilds: list[Any],
    data: dict[str, Path],
) -> list[Any]:
    """``upgrade``, ``models_match``, the stairway and ``downgrade_leaves_no_trace``, in that order.

    ``data``: the revision data, put in place just before its revision on the way up. Appends
    to ``rebuilds`` each rebuild of the scratch database the stairway made.
    """
    verifier = _Verifier(run, project, connection, held, url)
    verifier.data = data
    upgraded = verifier.upgrade()
    if upgraded.status == "failed":
        skipped = [verifier.checks.Case(check, check) for check in ("models_match", "downgrade_leaves_no_trace")]
        for case in skipped:
            case.skip("the upgrade failed")
        return [upgraded, *skipped]
    cases = [upgraded, verifier.models_match(), *verifier.down(), *verifier.up_again(), verifier.no_trace()]
    rebuilds += verifier.rebuilds
    run.read_current(connection)
    return cases
