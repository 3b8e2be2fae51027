"""The seam between the orchestration and a migration system.

:mod:`runner.commands` asks a :class:`Driver` for what it needs and never
imports Alembic or Django itself: the heads, what the database has
applied, the pending steps to a target, and applying them with per-step
callbacks. Each system is one module here that imports its tool only when
it is used (:func:`choose`, :func:`load`), so an Alembic run never imports
Django, and the reverse.

A driver module provides:

- ``detect(cwd, environ, settings) -> str | None``: what in the working
  directory or the environment says a project of this tool is here (shown in
  the error when two tools are), without importing the tool;
- ``Project(settings=, cwd=, url=)``: the loaded project, a :class:`Driver`;
- ``HAS_OWN_URL``, ``fallback_urls(settings, cwd)`` and ``shown_settings(settings, cwd)``:
  where the tool's projects keep a database URL, for :func:`runner.target.resolve`,
  and what ``config`` shows of the tool's own files.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from runner.errors import chain

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy.engine import URL, Connection
    from sqlalchemy.sql import Executable

    from runner import urls
    from runner.settings import Settings
    from runner.trace import Tracer

    # Runs one SQLAlchemy statement, with its parameters, in the transaction of the step being applied.
    Execute = Callable[[Executable, Mapping[str, Any]], object]


def tools() -> list[str]:
    """The migration systems this version has a driver for: the modules of this package."""
    return sorted(module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_"))


# The reason Driver.irreversible gives for a step whose revert does nothing. Right for a step that changed
# no schema (a data-only upgrade that checks or fixes rows), wrong for one that did: downgrade refuses it
# up front, and verify runs it and judges it by the schema it leaves.
DOES_NOTHING = "its downgrade() does nothing"
# The first words of a models_match line that is no operation a new revision would hold: a model table
# autogenerate cannot see, because env.py never imports its module (pytest-alembic's
# test_all_models_register_on_metadata), or a column the database holds otherwise than the model says.
NOT_REGISTERED = "not on target_metadata when env.py runs:"
# The reason for a step whose revert only raises NotImplementedError: Python's own word for "not meant to
# be implemented", and pytest-alembic's test_up_down_consistency stops there without failing. verify skips
# it (saying so) as if MIGRATION_VERIFY_IRREVERSIBLE listed it; downgrade refuses it up front, like any raise.
NOT_IMPLEMENTED = "its downgrade() only raises NotImplementedError"
SCHEMA_DIFFERS = "the database differs from the models:"


@dataclass(frozen=True)
class Step:
    """One pending migration step.

    Attributes:
        revision: its id (an Alembic revision id; Django's ``app_label.migration_name``).
        message: its one-line description.
        parents: the ids it follows (Alembic: its ``down_revision`` ids; Django:
            its parents in its app): what the database is at once it is reverted.
    """

    revision: str
    message: str
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class Applied:
    """One step that was applied and committed: a :class:`Step`'s fields, and ``duration_seconds``.

    ``duration_seconds`` is the wall time of the step and its version update; ``parents``
    are the ids it supersedes among the database's current ones.
    """

    revision: str
    message: str
    duration_seconds: float
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """A pending step's SQL, rendered without running it.

    Attributes:
        revision: the step's id.
        sql: its statements as text; ``None`` when they cannot be rendered.
        not_rendered: why not (it reads data, it runs Python), or what is missing from ``sql``.
        transactional: it runs inside a transaction.
    """

    revision: str
    sql: str | None
    not_rendered: str | None
    transactional: bool


@dataclass(frozen=True)
class VersionTable:
    """Where the tool records what is applied (Alembic: ``alembic_version``; Django: ``django_migrations``)."""

    name: str
    schema: str | None = None


@dataclass(frozen=True)
class MigrateOptions:
    """What the orchestration hands a driver's :meth:`Driver.upgrade` or :meth:`Driver.downgrade`.

    Attributes:
        connection: the runner's session, outside any transaction.
        url: the database URL with the run's session settings, for a tool that connects itself.
        target: the revision(s) to reach.
        version_table: where the tool records what is applied.
        on_applied: called after each step has committed.
        before_each: called with each step's id before it runs (the lock check, the ledger's
            ``started`` row); whatever it raises ends the run.
        in_transaction: called with a way to execute statements, the step's id and whether it
            still runs in one transaction, inside the step's transaction after the tool's record.
    """

    connection: Connection
    url: URL
    target: str
    version_table: VersionTable
    on_applied: Callable[[Applied], None]
    before_each: Callable[[str], None] = lambda _: None
    in_transaction: Callable[[Execute, str, bool], None] = lambda _, __, ___: None


class History(Protocol):
    """Queries over the tool's graph of steps; none changes the database. Every error is one of :mod:`runner.errors`.

    All but Django's :meth:`reverting` (Django plans a downgrade from ``django_migrations``) read only the files.
    """

    tool: str
    version_table: VersionTable
    merge_command: str  # what joins diverged heads (verify's single_head says it)

    def returned_early(self, revisions: Sequence[str], state: str) -> str:
        """The message when the tool's run returned with ``revisions`` still ``state`` (pending, applied)."""
        ...

    def database_url(self) -> tuple[str, str] | None:
        """The URL the project itself configures, and where it was found, when the settings give none.

        Django: its ``DATABASES`` entry. Alembic: ``None`` (the ini's URL is in the settings chain).
        """
        ...

    def summary(self, current: Sequence[str]) -> tuple[str, ...]:
        """What the logs, metrics and result document show of ``current``.

        Alembic: the version table's revisions. Django: the last applied migration of each app.
        """
        ...

    def heads(self) -> tuple[str, ...]:
        """The project's heads (leaf nodes), sorted."""
        ...

    def target_revisions(self, target: str) -> tuple[str, ...]:
        """The ids a target names (``()`` for ``base`` and for relative targets); ConfigError if unknown."""
        ...

    def is_relative(self, target: str) -> bool:
        """The target depends on the database (``+2``)."""
        ...

    def unknown(self, current: Sequence[str]) -> list[str]:
        """The applied ids the project does not have (an application rollback)."""
        ...

    def is_applied(self, current: Sequence[str], revision: str) -> bool:
        """``revision`` is applied when the database is at ``current``."""
        ...

    def past_target(self, current: Sequence[str], target: str) -> bool:
        """Reaching ``target`` from ``current`` would take a downgrade."""
        ...

    def pending(self, current: Sequence[str], target: str) -> list[Step]:
        """The steps an upgrade from ``current`` to ``target`` applies, in order."""
        ...

    def source(self, revision: str) -> Path | None:
        """The step's source file, whose checksum the ledger records (:mod:`runner.checksum`); None if it has none."""
        ...

    def commits_as_it_goes(self, revision: str) -> bool:
        """Whether the step commits part of its work on its own even where DDL is transactional.

        Alembic: an ``autocommit_block`` in its file; Django: ``atomic = False``.
        The ledger then commits a ``started`` row before it runs, so a crash
        half-way is named by the next run.
        """
        ...

    def diverged(self) -> list[str]:
        """The heads that diverge; empty when the history is one line (per app).

        Alembic: every head, when there are several; Django: the leaf nodes of an app that has several.
        """
        ...

    def step_target(self, revision: str, direction: str) -> str:
        """The target that applies (``up``) or reverts (``down``) this step, as upgrade and downgrade take it.

        A down target may revert more than the step (one side of a Django branch):
        the caller checks :meth:`reverting`. ``below``: a target that names the
        state just below the step whatever the database is at (no relative form), so
        that one downgrade from further up can end there.
        """
        ...

    def applied_revisions(self, current: Sequence[str]) -> list[str]:
        """Every step that ``current`` (from :meth:`read_applied`) records as applied, ancestors included."""
        ...

    def reverting(self, current: Sequence[str], target: str) -> list[Step]:
        """The steps a downgrade from ``current`` to ``target`` reverts, in order; ConfigError for a bad target."""
        ...

    def irreversible(self, steps: Sequence[Step]) -> list[tuple[str, str]]:
        """``(revision, why)`` for each of ``steps`` that cannot be reverted (none: all can)."""
        ...

    def breaking_operations(self, revision: str) -> list[tuple[str, str | None, str]]:
        """``(table, column or None, what)`` for each of the step's own operations that breaks the running release.

        A second signal beside the SQL, where the tool's operations say more than the SQL shows
        (Django on SQLite renders a field's removal as a table remake). Alembic: none.
        """
        ...

    def release_columns(self, current: Sequence[str]) -> dict[str, set[str]] | None:
        """The tables and columns the code of the release at ``current`` reads, by bare table name.

        None when the tool does not record them (Alembic has the new models only); Django: the
        migration state at ``current``. The plan's rolling-deploy check reads it (:mod:`runner.flags`).
        """
        ...


class Executor(Protocol):
    """Reading, recording and running steps on a database connection. Every error is one of :mod:`runner.errors`."""

    def read_applied(self, connection: Connection, version_table: VersionTable) -> tuple[str, ...]:
        """What the database has applied (empty without a version table); the read's transaction is ended."""
        ...

    def stamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as applied without running it."""
        ...

    def models_match(self, connection: Connection, url: URL, ignored: Sequence[str] = ()) -> tuple[str, list[str]]:
        """Compare the project's models with the migrated database: ``(passed|failed|skipped, lines)``.

        A line is an operation a new revision would hold (``add_column items.price``), or begins
        with :data:`NOT_REGISTERED` or :data:`SCHEMA_DIFFERS`. ``passed`` may carry lines that say
        which part of the check could not run, and why.
        """
        ...

    def unstamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as not applied without running its downgrade."""
        ...

    def render(self, current: Sequence[str], target: str, url: URL) -> list[Rendered]:
        """The SQL of each step an upgrade from ``current`` to ``target`` applies, without running it."""
        ...

    def rehearse(self, *, url: URL, target: str, version_table: VersionTable, tracer: Tracer) -> list[tuple[str, str]]:
        """Run the pending steps in one transaction that is always rolled back, each statement shown to ``tracer``.

        Returns ``(step, why)`` for the steps it did not run (they cannot run in a transaction).
        """
        ...

    def upgrade(self, options: MigrateOptions) -> None:
        """Apply the pending steps; raises MigrationFailed, BrokenProject, ConnectionLost or Stopped."""
        ...

    def downgrade(self, options: MigrateOptions) -> None:
        """Revert the steps down to ``options.target``, each as :meth:`upgrade` applies one; the same errors."""
        ...


class Driver(History, Executor, Protocol):
    """What the orchestration asks of a migration system: its :class:`History` and its :class:`Executor`."""


def choose(requested: str, *, cwd: Path, environ: Mapping[str, str], settings: Settings) -> str:
    """The tool of this run: ``MIGRATION_TOOL``, or for ``auto`` the one whose project is found here.

    Args:
        requested: ``MIGRATION_TOOL`` (``auto`` or a tool name).
        cwd: the working directory.
        environ: the process environment (``DJANGO_SETTINGS_MODULE``).
        settings: the other settings (``MIGRATION_ALEMBIC_CONFIG``, ``MIGRATION_SCRIPT_LOCATION``).

    Returns:
        A name from :func:`tools`. With nothing found, ``alembic``, whose loader then says what is missing.

    Raises:
        ConfigError: an unknown tool, or ``auto`` found projects of two tools.
    """
    from runner.errors import ConfigError  # noqa: PLC0415

    if requested != "auto":
        if requested not in tools():
            raise ConfigError(f"MIGRATION_TOOL={requested!r}: use one of auto, {', '.join(tools())}")
        return requested
    found = {}
    for tool in tools():
        evidence = importlib.import_module(f"runner.drivers.{tool}").detect(cwd, environ, settings)
        if evidence:
            found[tool] = evidence
    if len(found) > 1:
        raise ConfigError(
            f"found both {' and '.join(f'a {tool} project ({why})' for tool, why in found.items())}; "
            f"set MIGRATION_TOOL to {' or '.join(found)}"
        )
    return next(iter(found), "alembic")


def load(tool: str, *, settings: Settings, cwd: Path, url: urls.DatabaseUrl | None) -> Driver:
    """Load the project with the driver of ``tool``, importing only that tool.

    Args:
        tool: a name from :func:`tools`.
        settings: the run's settings.
        cwd: the working directory.
        url: the database URL the runner resolved, or ``None`` when the project
            is to give its own (Django's ``DATABASES``: :meth:`Driver.database_url`).

    Raises:
        ConfigError: the project cannot be loaded (BrokenProject, BrokenRevisionFiles included).
    """
    module = importlib.import_module(f"runner.drivers.{tool}")
    driver: Driver = module.Project(settings=settings, cwd=cwd, url=url)
    return driver


class CallbackFailed(Exception):
    """A callback of the runner's own raised inside the tool's run: not a failed step.

    Attributes:
        error: what the callback raised; the driver re-raises it unchanged.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def own(callback: Callable[..., None], *args: Any) -> None:
    """Run one of the runner's callbacks so that what it raises passes the tool's run as :class:`CallbackFailed`."""
    try:
        callback(*args)
    except Exception as error:
        raise CallbackFailed(error) from error


@contextlib.contextmanager
def project_code() -> Iterator[None]:
    """While project code runs (env.py, revision files, Django apps), what it prints becomes log events.

    Each line written to ``sys.stdout`` or ``sys.stderr`` (``print()``, a library's own
    messages) is one ``project.output`` event with ``stream`` and ``line``, redacted like
    every event, so stdout carries only documents and JSON lines, never a raw password.
    The runner's own handlers hold the streams they were given, so its logs are unaffected.
    """
    from runner import logs  # noqa: PLC0415

    with (
        contextlib.redirect_stdout(logs.LineEvents("stdout")) as out,
        contextlib.redirect_stderr(logs.LineEvents("stderr")) as err,
    ):
        try:
            yield
        finally:
            out.flush_partial()
            err.flush_partial()


def where(error: BaseException, *, also_skip: tuple[str, ...] = ()) -> str:
    """`` (file:line)`` of the innermost project frame of a traceback, or ``""``.

    Frames in site-packages and in the runner are skipped, and those whose file
    name contains one of ``also_skip``, unless nothing else is left.
    """
    if isinstance(error, SyntaxError) and error.filename:
        return f" ({error.filename}:{error.lineno})"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "site-packages" not in f.filename]
    skipped = ("/runner/", *also_skip)
    frames = [f for f in frames if not any(part in f.filename for part in skipped)] or frames
    return f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""


# How much of a failed statement an error shows: enough to find it in the revision, never a whole data load.
STATEMENT_SHOWN = 300


def shown_statement(sql: str | None) -> str | None:
    """A failed statement as errors show it: one line, redacted, at most :data:`STATEMENT_SHOWN` characters.

    Redacted before it is cut, so a password that straddles the cut is still caught whole
    (``ALTER ROLE app PASSWORD '…'`` shows ``PASSWORD '***'``). Bound parameters are never shown.

    Args:
        sql: the statement's text, with its placeholders; None when no statement failed.

    Returns:
        The text to show, ending in ``…`` when it was cut; None for None or blank text.
    """
    from runner import logs  # noqa: PLC0415

    if sql is None or not sql.strip():
        return None
    text = logs.redact_text(" ".join(sql.split()))
    return text if len(text) <= STATEMENT_SHOWN else text[: STATEMENT_SHOWN - 1] + "…"


def statement_of(error: BaseException) -> str | None:
    """The SQL of the statement that raised ``error`` (SQLAlchemy's ``StatementError.statement``), shown."""
    statements = (getattr(raised, "statement", None) for raised in chain(error))
    return next((shown_statement(text) for text in statements if isinstance(text, str)), None)


def line_in(error: BaseException, source: str | Path | None) -> str | None:
    """``file:line`` of the innermost frame of ``error``'s traceback in ``source`` (a revision's file).

    The file is shown relative to the working directory when it is under it, as a user's editor opens it.
    Where no frame of the traceback is in the file (Django's ``RunSQL`` runs from Django's own code), the
    file alone; None when there is no file.
    """
    if source is None:
        return None
    wanted = Path(source).resolve()
    lines = (
        [
            frame.lineno
            for frame in traceback.extract_tb(raised.__traceback__)
            if Path(frame.filename).resolve() == wanted
        ]
        for raised in chain(error)
    )
    line = next((found[-1] for found in lines if found), None)
    try:
        shown = wanted.relative_to(Path.cwd().resolve())
    except ValueError:
        shown = wanted
    return str(shown) if line is None else f"{shown}:{line}"
