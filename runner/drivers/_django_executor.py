"""The Django driver's executor (:class:`runner.drivers.Executor`): reading, stamping and migrating.

Applying runs a subclass of Django's ``migrate`` command (``call_command``), so
``pre_migrate``/``post_migrate``, ``run_syncdb`` apps, the consistency check and
the conflict check all happen as with ``manage.py migrate``. Its
``migration_progress_callback`` gives one ``revision.applied`` per migration;
its stdout becomes ``django.output`` log events. The ledger row is written in
the migration's own transaction (:func:`_recorded_with_their_changes`).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from runner import logs
from runner.drivers import (
    Applied,
    CallbackFailed,
    MigrateOptions,
    Rendered,
    VersionTable,
    line_in,
    own,
    project_code,
    shown_statement,
)
from runner.errors import BrokenProject, ConfigError, ConnectionLost, MigrationFailed, RunnerError, Stopped

# Django and SQLAlchemy are imported where they are used: choosing the tool (`detect`) needs neither.
if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection

    from runner.drivers import Execute
    from runner.trace import Tracer
from runner.drivers._django_database import _as_dbapi_error, _close, _described, _lost, _pyformat_dialect, _where
from runner.drivers._django_history import DjangoHistory, Key, _applied_ids, _id, _key, _message, _parents_in_app


class DjangoExecutor(DjangoHistory):
    """The members of :class:`runner.drivers.Executor` for a Django project, on top of its history."""

    def _build_loader(self, connection: Any) -> Any:
        """Django's ``MigrationLoader`` on ``connection`` (:class:`runner.drivers.django.Project` builds it)."""
        raise NotImplementedError

    def quick_ledger_rows(self, table: str) -> list[Any]:
        """The ledger's rows of this tool (:func:`runner.drift.select_statement`), on Django's own session.

        For the no-op check, which does not import SQLAlchemy.

        Raises:
            Exception: whatever the database raises (no ledger yet included).
        """
        from django.db import connections  # noqa: PLC0415

        from runner import drift  # noqa: PLC0415

        session = connections[self.alias]
        with session.cursor() as cursor:
            statement = drift.select_statement(session.ops.quote_name, table, None, self.tool, "django_migrations")
            if statement is None:
                raise ValueError("the ledger's scope needs quoting")  # the full path reads it
            cursor.execute(statement)
            return list(cursor.fetchall())

    def read_applied(self, connection: Connection, version_table: VersionTable) -> tuple[str, ...]:
        """Every migration ``django_migrations`` records (a squash counts once all it replaces are), sorted.

        Read on Django's own session to the alias (``MigrationLoader`` with a
        connection), which then serves the plan; Django runs it in autocommit.
        Also Django's ``check_consistent_history``.

        Raises:
            ConfigError: ``InconsistentMigrationHistory``.
            ConnectionLost: the session to the database was lost.
        """
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.exceptions import InconsistentMigrationHistory  # noqa: PLC0415

        session = connections[self.alias]
        with self._database_errors(reading=True):
            loader = self._build_loader(session)
            try:
                loader.check_consistent_history(session)
            except InconsistentMigrationHistory as error:
                raise ConfigError(
                    f"inconsistent migration history: {error}; the database has a migration applied before one "
                    "it depends on (fix django_migrations, or fake the missing dependency)"
                ) from None
        self._loader = loader
        return _applied_ids(loader)

    def stamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as applied without running it (``MigrationExecutor.record_migration``, as ``--fake``)."""
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415

        migration = self._loader.graph.nodes.get(_key(revision))
        if migration is None:
            raise ConfigError(f"{revision} is not a migration of this project")
        with self._database_errors():
            MigrationExecutor(connections[self.alias]).record_migration(migration)

    def unstamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as not applied without running it (``MigrationRecorder.record_unapplied``)."""
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.recorder import MigrationRecorder  # noqa: PLC0415

        app, name = _key(revision)
        with self._database_errors():
            MigrationRecorder(connections[self.alias]).record_unapplied(app, name)

    def models_match(self, connection: Connection, url: URL, ignored: Sequence[str] = ()) -> tuple[str, list[str]]:
        """Whether the models need a migration no file has, and whether the database is what the models say.

        First ``makemigrations --check --dry-run`` (Django's API): the models against the
        migration state. Then the models against the database's own introspection
        (:func:`runner.drivers._django_models.differences`): a ``RunSQL`` whose SQL and
        ``state_operations`` disagree passes the first and fails the second.

        Returns:
            ``("passed", [])``, or ``("failed", lines)``: the operations as ``makemigrations``
            lists them, each prefixed with its app (``shop: Add field price to product``), then
            the differences from introspection.
        """
        from runner.drivers import _django_models  # noqa: PLC0415  (verify only)

        operations = self._operations_missing()
        with self._database_errors():
            state = self._loader.project_state()  # at the leaf nodes: what the migrations say the schema is
            found = _django_models.differences(self.alias, state.apps)
        return ("failed", operations + found) if operations or found else ("passed", [])

    def _operations_missing(self) -> list[str]:
        """What ``makemigrations --check --dry-run`` would write, one line per operation; empty when nothing."""
        from django.core.management import call_command  # noqa: PLC0415

        out = io.StringIO()
        try:
            with project_code():
                call_command("makemigrations", check=True, dry_run=True, interactive=False, stdout=out, stderr=out)
        except SystemExit as exit_:
            if not exit_.code:
                return []
            operations, app = [], ""
            for line in out.getvalue().splitlines():
                stripped = line.strip()
                if stripped.startswith("Migrations for"):
                    app = stripped.split("'")[1] if "'" in stripped else stripped
                elif stripped.startswith(("-", "+", "~")):
                    operations.append(f"{app}: {stripped.lstrip('-+~ ')}")
            return operations or [line for line in out.getvalue().splitlines() if line.strip()]
        return []

    def upgrade(self, options: MigrateOptions) -> None:
        """Run Django's ``migrate`` to ``target`` on the alias.

        Args:
            options: its ``target`` is ``heads``, ``app_label`` or ``app_label:migration_name``;
                the connection, URL and version table are unused (Django migrates on its own
                session, from its ``DATABASES`` entry, into ``django_migrations``); ``on_applied``
                is called after each migration is applied and recorded, ``before_each`` before it
                runs, ``in_transaction`` right after Django records it (in its transaction, where
                it has one).

        Raises:
            MigrationFailed: a migration raised; the message names it.
            ConfigError: what ``migrate`` refuses (its ``CommandError``), or a failing system check.
            ConnectionLost: the connection was lost while migrating.
            Stopped: the runner's own signal or deadline, with the running migration attached.
        """
        target = options.target
        app, _, name = ("" if target == "heads" else target).partition(":")
        self._call_migrate([part for part in (app, name) if part], _RECORDS_APPLIED, options)

    def downgrade(self, options: MigrateOptions) -> None:
        """Run Django's ``migrate app_label migration_name`` (or ``zero``) backwards; as :meth:`upgrade`."""
        app, _, name = options.target.partition(":")
        self._call_migrate([app, name], _RECORDS_UNAPPLIED, options)

    def render(self, current: Sequence[str], target: str, url: URL) -> list[Rendered]:
        """Each pending migration's SQL as ``sqlmigrate`` shows it (``MigrationLoader.collect_sql``), run-free.

        A migration with ``RunPython`` keeps the SQL of its other operations,
        and says that its Python is not in it.
        """
        from django.db import connections  # noqa: PLC0415
        from django.db.migrations.operations.special import RunPython  # noqa: PLC0415

        session = connections[self.alias]
        rendered = []
        for step in self.pending(current, target):
            migration = self._loader.graph.nodes[_key(step.revision)]
            transactional = bool(migration.atomic and session.features.can_rollback_ddl)
            python = [op.describe() for op in migration.operations if isinstance(op, RunPython)]
            try:
                with self._database_errors(), project_code():
                    statements = self._loader.collect_sql([(migration, False)])
            except Exception as error:  # project code: what cannot be rendered is reported, not raised
                first_line = (str(error).splitlines() or [""])[0]
                why = f"cannot be rendered: {type(error).__name__}: {first_line}"
                rendered.append(Rendered(step.revision, None, why, transactional))
                continue
            note = f"runs Python, not shown as SQL: {'; '.join(python)}" if python else None
            rendered.append(Rendered(step.revision, "\n".join(statements) + "\n", note, transactional))
        return rendered

    def rehearse(self, *, url: URL, target: str, version_table: VersionTable, tracer: Tracer) -> list[tuple[str, str]]:
        """Run ``migrate`` inside ``transaction.atomic()`` and roll it back, showing ``tracer`` each statement.

        Each migration's own atomic block becomes a savepoint inside the outer
        one (Django docs, "Database transactions"). A migration with ``atomic =
        False`` would run outside any transaction: it and those after it are not run.

        Returns:
            ``(migration, why)`` of the migrations that were not run.

        Raises:
            MigrationFailed: a migration raised (nothing stays: it is all rolled back).
        """
        from django.core.management import call_command  # noqa: PLC0415
        from django.db import connections, transaction  # noqa: PLC0415

        session = connections[self.alias]
        plan = [_key(step.revision) for step in self.pending(_applied_ids(self._loader), target)]
        progress = _Rehearsal(session, tracer, plan)
        app, _, name = ("" if target == "heads" else target).partition(":")
        out, err = _LogLines("info"), _LogLines("warning")
        try:
            with self._database_errors(), project_code(), transaction.atomic(using=self.alias):
                cursor = session.connection.cursor()
                try:
                    tracer.begin(cursor)
                finally:
                    cursor.close()
                with session.execute_wrapper(progress.observed):
                    call_command(
                        _migrate_command(progress),
                        *[part for part in (app, name) if part],
                        database=self.alias,
                        interactive=False,
                        verbosity=1,
                        skip_checks=True,
                        no_color=True,
                        stdout=out,
                        stderr=err,
                    )
                raise _RolledBack
        except _RolledBack:
            pass
        except (ConfigError, Stopped, ConnectionLost):
            raise
        except BaseException as error:
            from runner import trace  # noqa: PLC0415

            stop = trace.stop_in(error)
            if stop is not None and not stop.committed:
                progress.stopped(stop)
                return progress.skipped
            failure = self._failure(error, progress)
            message = f"plan --trace: {failure.message} (rolled back: nothing was changed)"
            raise MigrationFailed(
                message, revision=tracer.revision, sqlstate=getattr(failure, "sqlstate", None)
            ) from error
        finally:
            out.flush()
            err.flush()
        return progress.skipped

    def _call_migrate(self, arguments: list[str], records: re.Pattern[str], options: MigrateOptions) -> None:
        """``call_command(migrate, *arguments)`` with the runner's hooks around each migration; see :meth:`upgrade`."""
        from django.core.management import call_command  # noqa: PLC0415
        from django.core.management.base import CommandError  # noqa: PLC0415
        from django.db import connections  # noqa: PLC0415

        session = connections[self.alias]
        progress = _Progress(session, options.before_each, options.on_applied, options.in_transaction, records)
        out, err = _LogLines("info"), _LogLines("warning")
        try:
            with session.execute_wrapper(progress.record), project_code(), _recorded_with_their_changes():
                call_command(
                    _migrate_command(progress),
                    *arguments,
                    database=self.alias,
                    interactive=False,
                    verbosity=1,
                    skip_checks=False,  # manage.py migrate runs the system checks
                    no_color=True,
                    stdout=out,
                    stderr=err,
                )
        except CallbackFailed as callback:
            raise callback.error from None
        except Stopped as stopped:
            if progress.running is not None:
                stopped.revision = progress.running_id
                stopped.transactional = progress.transactional
            _close(session)
            raise
        except CommandError as error:
            if not progress.started_any:  # migrate refused: conflicts, an unknown app, a failing system check
                raise ConfigError(f"migrate: {str(error).replace(chr(10), ' ')}") from None
            raise self._failure(error, progress) from error
        except BaseException as error:
            _close(session)
            raise self._failure(error, progress) from error
        finally:
            out.flush()
            err.flush()

    def _failure(self, error: BaseException, progress: _Progress) -> RunnerError:
        """What an exception out of ``migrate`` means: a lost connection, a broken project, or a failed migration."""
        from runner import database  # noqa: PLC0415

        translated = _as_dbapi_error(error)
        failure = database.classify(translated) if translated is not None else database.Failure(None, False)
        if translated is not None and _lost(translated):
            failure = database.Failure(failure.code or "08006", True)
        running = progress.running_id
        if failure.connection:
            return ConnectionLost(
                f"connection lost while applying migration {running} "
                f"(SQLSTATE {failure.code}): {database.error_message(translated or error)}"
            )
        message = database.error_message(translated) if translated is not None else _described(error)
        if isinstance(error, SystemExit | KeyboardInterrupt | GeneratorExit):
            message = f"{type(error).__name__}({error.args[0] if error.args else ''}) raised by project code"
        if running is None:
            if not progress.started_any and failure.code is None:
                return BrokenProject(f"migrate, before any migration ran: {message}{_where(error)}")
            return MigrationFailed(f"migrate: {message}", revision=None, sqlstate=failure.code)
        transactional = progress.transactional
        if not transactional:
            message += "; this migration ran outside a transaction, so its changes may be partly applied"
        module = sys.modules.get(type(progress.running).__module__)
        return MigrationFailed(
            message,
            revision=running,
            sqlstate=failure.code,
            transactional=transactional,
            statement=shown_statement(progress.failed_sql),
            location=line_in(error, getattr(module, "__file__", None)),
        )


_RECORDS_APPLIED = re.compile(r"^\s*INSERT\s+INTO\s+[`\"]?django_migrations\b", re.IGNORECASE)


# MigrationRecorder.record_unapplied: a DELETE of the migration's row.
_RECORDS_UNAPPLIED = re.compile(r"^\s*DELETE\s+FROM\s+[`\"]?django_migrations\b", re.IGNORECASE)


class _LogLines(io.TextIOBase):
    """A text stream whose lines become ``django.output`` log events (Django's ``migrate`` chatter)."""

    def __init__(self, level: str) -> None:
        self._level = level
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            if line.strip():
                getattr(logs.get_logger(), self._level)("django.output", line=line.strip())
        return len(text)

    def flush(self) -> None:
        if self._partial.strip():
            getattr(logs.get_logger(), self._level)("django.output", line=self._partial.strip())
        self._partial = ""


class _Progress:
    """The runner's view of one ``migrate`` call: which migration runs, and the hooks around each."""

    def __init__(
        self,
        session: Any,
        before_each: Callable[[str], None],
        on_applied: Callable[[Applied], None],
        in_transaction: Callable[[Execute, str, bool], None],
        records: re.Pattern[str],
    ) -> None:
        self.session = session
        self.records = records
        self.before_each = before_each
        self.on_applied = on_applied
        self.in_transaction = in_transaction
        self.running: Any = None
        self.started_any = False
        self.transactional = True
        self._recorded = False
        self._started = 0.0
        self.failed_sql: str | None = None  # the statement that raised, for the error to show

    @property
    def running_id(self) -> str | None:
        return None if self.running is None else _id((self.running.app_label, self.running.name))

    def starting(self, migration: Any) -> None:
        revision = _id((migration.app_label, migration.name))
        own(self.before_each, revision)
        self.running, self.started_any, self._recorded = migration, True, False
        # Non-atomic migrations, and every one on MySQL (no transactional DDL), commit as they go.
        self.transactional = bool(migration.atomic and self.session.features.can_rollback_ddl)
        self._started = time.monotonic()

    def applied(self, migration: Any) -> None:
        key = (migration.app_label, migration.name)
        duration = time.monotonic() - self._started
        self.running = None
        own(self.on_applied, Applied(_id(key), _message(migration), duration, _parents_in_app(migration)))

    def record(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        """Django's ``execute_wrapper``: after its ``django_migrations`` insert, the ledger row on that session.

        A statement of the running migration that raises is kept (``failed_sql``) for its error to show.
        """
        try:
            result = execute(sql, params, many, context)
        except Exception:
            if self.running is not None:
                self.failed_sql = sql
            raise
        if self.running is not None and not self._recorded and self.records.match(sql):
            self._recorded = True
            dialect = _pyformat_dialect(self.session.vendor)

            def run(statement: Any, parameters: Mapping[str, Any]) -> None:
                # A cursor of its own on the same session: Django still reads the insert's RETURNING from its cursor.
                compiled = statement.compile(dialect=dialect, column_keys=list(parameters))
                with context["connection"].cursor() as cursor:
                    cursor.execute(str(compiled), compiled.construct_params(parameters))

            own(self.in_transaction, run, self.running_id, self.transactional)
        return result


class _RolledBack(Exception):
    """Leaves ``plan --trace``'s outer atomic block, which rolls everything back."""


# The savepoints of Django's own nested atomic blocks (BaseDatabaseWrapper.savepoint: "s{thread}_x{n}"), which
# are how a migration's atomic block runs inside the trace's transaction: they pass the trace's guard.
_DJANGOS_OWN_SAVEPOINT = re.compile(r'(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT) "s\d+_x\d+"')


class _Rehearsal(_Progress):
    """``migrate``'s progress under ``plan --trace``: tells the tracer what runs; stops before a non-atomic one."""

    def __init__(self, session: Any, tracer: Tracer, plan: list[Key]) -> None:
        super().__init__(session, lambda _: None, lambda _: None, lambda *_: None, _RECORDS_APPLIED)
        self.tracer, self.plan = tracer, plan
        self.skipped: list[tuple[str, str]] = []

    def stopped(self, stop: Any) -> None:
        """The running migration and every one after it are not traced, saying why; what it showed is dropped."""
        from runner import trace  # noqa: PLC0415

        revision = self.tracer.revision
        if revision is None:
            return
        key = _key(revision)
        later = self.plan[self.plan.index(key) + 1 :] if key in self.plan else []
        self.skipped += trace.not_traced(self.tracer, stop, revision, [_id(k) for k in later], noun="migration")

    def starting(self, migration: Any) -> None:
        key = (migration.app_label, migration.name)
        if not migration.atomic:
            later = self.plan[self.plan.index(key) + 1 :] if key in self.plan else []
            self.skipped.append(
                (_id(key), "atomic = False: it runs outside a transaction, so it cannot be rolled back")
            )
            self.skipped.extend((_id(k), "comes after a migration that was not run") for k in later)
            raise _RolledBack
        super().starting(migration)
        self.tracer.revision = _id(key)

    def applied(self, migration: Any) -> None:
        self.tracer.revision = None
        self.running = None

    def observed(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        """Django's ``execute_wrapper``: each statement of the migration, shown to the tracer.

        Raises:
            NotTraceable: the statement would end or leave the transaction (:func:`runner.trace.why_not_traceable`);
                it is not run.
        """
        from runner import trace  # noqa: PLC0415

        if not _DJANGOS_OWN_SAVEPOINT.fullmatch(sql):
            trace.guard(sql)  # before the server sees it: the trace must never commit
        self.tracer.before()
        result = execute(sql, params, many, context)
        raw = context["connection"].connection.cursor()  # the DB-API connection: outside Django's wrappers
        try:
            self.tracer.after(raw, sql)
        finally:
            raw.close()
        return result


def _migrate_command(progress: _Progress) -> Any:
    """Django's ``migrate`` command, reporting each migration to ``progress`` instead of printing it."""
    from django.core.management.commands.migrate import Command as Migrate  # noqa: PLC0415

    # Django has no type information, so Migrate is Any to mypy.
    class RunnerMigrate(Migrate):  # type: ignore[misc]
        def migration_progress_callback(self, action: str, migration: Any = None, fake: bool = False) -> None:
            if action in ("apply_start", "unapply_start"):
                progress.starting(migration)
            elif action in ("apply_success", "unapply_success"):
                progress.applied(migration)

    return RunnerMigrate()


@contextlib.contextmanager
def _recorded_with_their_changes() -> Iterator[None]:
    """Record each atomic migration in ``django_migrations`` inside its own transaction, where DDL can roll back.

    Django's ``MigrationExecutor`` records an applied migration after its transaction has
    committed whenever the schema editor has deferred SQL (the indexes and foreign keys of a
    ``CreateModel``), and every unapplied one after the commit. A stop in between leaves a
    change that ``django_migrations`` (and so the ledger, written beside it) does not record,
    and the next run fails on "relation ... already exists" naming nothing. Here the record
    is written before the transaction ends: the deferred SQL still runs in it, after the
    record, and a failure rolls back both. Non-atomic migrations, MySQL's (no transactional
    DDL) and ``--fake`` runs keep Django's own order.

    ``apply_migration`` and ``unapply_migration`` are not documented API; the replacements
    follow Django 5.2's, and tests/test_real_projects.py pins the order they replace.
    """
    from django.db.migrations.executor import MigrationExecutor  # noqa: PLC0415

    apply, unapply = MigrationExecutor.apply_migration, MigrationExecutor.unapply_migration

    def transactional(executor: Any, migration: Any, fake: bool) -> bool:
        return not fake and bool(migration.atomic) and bool(executor.connection.features.can_rollback_ddl)

    def apply_migration(self: Any, state: Any, migration: Any, fake: bool = False, fake_initial: bool = False) -> Any:
        if fake_initial or not transactional(self, migration, fake):
            return apply(self, state, migration, fake, fake_initial)
        if self.progress_callback:
            self.progress_callback("apply_start", migration, fake)
        with self.connection.schema_editor(atomic=True) as schema_editor:
            state = migration.apply(state, schema_editor)
            self.record_migration(migration)  # the deferred SQL runs after this, in the same transaction
        if self.progress_callback:
            self.progress_callback("apply_success", migration, fake)
        return state

    def unapply_migration(self: Any, state: Any, migration: Any, fake: bool = False) -> Any:
        if not transactional(self, migration, fake):
            return unapply(self, state, migration, fake)
        if self.progress_callback:
            self.progress_callback("unapply_start", migration, fake)
        with self.connection.schema_editor(atomic=True) as schema_editor:
            state = migration.unapply(state, schema_editor)
            for app_label, name in migration.replaces:  # a squash: its replaced migrations too, as Django does
                self.recorder.record_unapplied(app_label, name)
            self.recorder.record_unapplied(migration.app_label, migration.name)
        if self.progress_callback:
            self.progress_callback("unapply_success", migration, fake)
        return state

    MigrationExecutor.apply_migration = apply_migration
    MigrationExecutor.unapply_migration = unapply_migration
    try:
        yield
    finally:
        MigrationExecutor.apply_migration = apply
        MigrationExecutor.unapply_migration = unapply
