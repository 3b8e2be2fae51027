"""The Alembic driver's executor (:class:`runner.drivers.Executor`): reading, stamping and applying on a connection.

It runs the project's own, unmodified ``env.py``. Three defaults are passed
into that env.py's ``context.configure()`` unless it sets them itself:
``transaction_per_migration=True`` (so a failure at revision k leaves 1..k-1
applied and recorded), ``version_table`` and ``version_table_schema``; and an
``on_version_apply`` callback is added to the env.py's own, so that the
runner's ledger row commits in the revision's transaction.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from runner import logs, stopping
from runner.drivers import (
    Applied,
    CallbackFailed,
    MigrateOptions,
    Rendered,
    VersionTable,
    _alembic_env,
    line_in,
    own,
    project_code,
    statement_of,
    where,
)
from runner.errors import BrokenProject, ConfigError, ConnectionLost, MigrationFailed, RunnerError, Stopped

# Alembic itself is imported where it is used, so that choosing the tool (`detect`) and a Django
# run import none of it.
if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext, MigrationStep
    from alembic.script import Script
    from sqlalchemy.engine import URL, Connection

    from runner.trace import Tracer
from runner.drivers._alembic_history import AlembicHistory, _down_revisions, _heads_arg, _history_errors


class AlembicExecutor(AlembicHistory):
    """The members of :class:`runner.drivers.Executor` for an Alembic project, on top of its history."""

    _session_timeouts: _alembic_env.SessionTimeouts

    def stamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as applied without running it (``MigrationContext.stamp``, Alembic API).

        Raises:
            ConfigError: the revision cannot be resolved.
        """
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table.name, "version_table_schema": version_table.schema}
        )
        with _history_errors(revision), connection.begin():
            context.stamp(self.script, revision)

    def unstamp(self, connection: Connection, revision: str, version_table: VersionTable) -> None:
        """Record ``revision`` as reverted without running it: the version table gets its ``down_revision`` ids.

        ``MigrationContext.stamp`` (Alembic API) to the current heads with
        ``revision`` replaced by its down revisions, as ``alembic stamp`` takes several.

        Raises:
            ConfigError: the revision cannot be resolved.
        """
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table.name, "version_table_schema": version_table.schema}
        )
        with _history_errors(revision):
            current = set(context.get_current_heads())
            script = self.script.get_revision(revision)
            below = set(_down_revisions(script)) if script else set()
            heads = tuple(sorted((current - {revision}) | below))
        if connection.in_transaction():
            connection.rollback()
        with _history_errors(revision), connection.begin():
            context.stamp(self.script, cast(str, heads) if heads else "base")

    def read_applied(self, connection: Connection, version_table: VersionTable) -> tuple[str, ...]:
        """Read the revisions recorded in the version table, read-only.

        Uses ``MigrationContext.get_current_heads()`` (Alembic API), which returns
        an empty tuple when the version table does not exist yet. Ends the
        transaction it opened, so the connection can be handed on.

        Returns:
            The revision ids, sorted.
        """
        from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

        context = MigrationContext.configure(
            connection, opts={"version_table": version_table.name, "version_table_schema": version_table.schema}
        )
        try:
            return tuple(sorted(context.get_current_heads()))
        finally:
            if connection.in_transaction():
                connection.rollback()

    def render(self, current: Sequence[str], target: str, url: URL) -> list[Rendered]:
        """Each pending revision's SQL from Alembic's offline mode (``alembic upgrade CURRENT:TARGET --sql``).

        The project's env.py runs its offline branch (``context.is_offline_mode()``),
        starting at the database's revisions. The output is cut per revision at
        the points where Alembic asks for the next step. A revision that raises
        offline (it reads data through ``op.get_bind()``, say) is reported as not
        rendered, and the rendering goes on after it as if it had run.

        Raises:
            ConfigError: the target cannot be resolved.
        """
        from runner import database  # noqa: PLC0415

        pending = self.pending(current, target)
        mysql = database.family(url) == "mysql"
        done: dict[str, Rendered] = {}
        start = tuple(current)
        self._use_url(url)
        while len(done) < len(pending):
            marks, text, failure = self._render_from(start, target)
            for (revision, begin), (_, end) in itertools.pairwise(marks):
                if revision is not None:
                    sql = text[begin:end]
                    done[revision] = Rendered(revision, sql, None, self._transactional_step(revision, mysql))
            if failure is None:
                break
            first_line = (str(failure).splitlines() or [""])[0]
            why = f"cannot be rendered offline: {type(failure).__name__}: {first_line}"
            failed = marks[-1][0] if marks else None
            if failed is None:  # env.py itself failed offline: nothing more can be shown
                for step in pending:
                    done.setdefault(step.revision, Rendered(step.revision, None, f"env.py {why}", not mysql))
                break
            done[failed] = Rendered(failed, None, why, self._transactional_step(failed, mysql))
            start = (failed,)  # go on after it, as if it had run
        return [done[s.revision] for s in pending if s.revision in done]

    def _render_from(
        self, start: tuple[str, ...], target: str
    ) -> tuple[list[tuple[str | None, int]], str, Exception | None]:
        """One offline run of env.py from ``start``: where each step's SQL begins, the SQL, and what it raised."""
        from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

        buffer = io.StringIO()
        marks: list[tuple[str | None, int]] = []

        def steps(heads: tuple[str, ...], _: Any) -> Iterator[Any]:
            for step in self.script._upgrade_revs(target, _heads_arg(heads)):
                marks.append((step.revision.revision, buffer.tell()))
                yield step
            marks.append((None, buffer.tell()))

        self.config.output_buffer = buffer
        environment = EnvironmentContext(
            self.config, self.script, fn=steps, as_sql=True, starting_rev=start or None, destination_rev=target
        )
        try:
            with environment, logs.env_py_file_config_ignored(), project_code():
                self.script.run_env()
        except Exception as error:  # project code, offline: what it cannot render is reported, not raised
            return marks, buffer.getvalue(), error
        finally:
            self.config.output_buffer = None
        return marks, buffer.getvalue(), None

    def rehearse(self, *, url: URL, target: str, version_table: VersionTable, tracer: Tracer) -> list[tuple[str, str]]:
        """Run the pending revisions in one transaction that is always rolled back, showing ``tracer`` each statement.

        env.py runs online as in :meth:`upgrade`. When it configures its
        connection, a transaction is begun on it first, so Alembic treats the
        transaction as external (``MigrationContext``'s ``_in_external_transaction``:
        ``begin_transaction()`` then neither begins nor commits), and the
        runner rolls it back after the last revision. A revision with an
        ``autocommit_block`` would commit: it and those after it are not run.

        Returns:
            ``(revision, why)`` of the revisions that were not run.

        Raises:
            ConfigError: env.py configures no connection in online mode.
            MigrationFailed: a revision raised (nothing stays: it is all rolled back).
        """
        from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

        rehearsal = _Rehearsal(self, target, version_table, tracer)
        environment = EnvironmentContext(
            self.config, self.script, fn=rehearsal.steps, as_sql=False, starting_rev=None, destination_rev=target
        )
        rehearsal.configure = environment.configure
        environment.configure = rehearsal.configure_rolled_back  # type: ignore[method-assign]
        self._use_url(url)
        from runner import trace  # noqa: PLC0415

        try:
            with environment, logs.env_py_file_config_ignored(), project_code():
                self.script.run_env()
        except (ConfigError, Stopped):
            raise
        except BaseException as error:  # project code
            from runner import database  # noqa: PLC0415

            failed = rehearsal.running[0] if rehearsal.running else rehearsal.last_started
            stop = trace.stop_in(error)
            if stop is not None and not stop.committed:
                rehearsal.stopped(stop)
                return rehearsal.skipped
            if stop is not None:
                raise MigrationFailed(
                    f"plan --trace: revision {failed}: {stop.reason}; what ran before it may have stayed",
                    revision=failed,
                    sqlstate=None,
                ) from error
            message = f"plan --trace: {database.error_message(error)} (rolled back: nothing was changed)"
            raise MigrationFailed(message, revision=failed, sqlstate=database.classify(error).code) from error
        finally:
            rehearsal.roll_back()
        return rehearsal.skipped

    def models_match(self, connection: Connection, url: URL, ignored: Sequence[str] = ()) -> tuple[str, list[str]]:
        """Compare the models ``env.py`` configures as ``target_metadata`` with the database (``command.check``).

        Alembic's own public API (``alembic check``, Alembic 1.9+): env.py runs in
        autogenerate mode, and the operations a new revision would contain are the
        difference.

        Args:
            connection: a connection to the migrated database, outside a transaction.
            url: its URL, for an env.py that builds its own engine.
            ignored: tables no model describes on purpose (the version table, the ledger).

        Returns:
            ``("passed", [])``; ``("failed", operations)``, one line each, e.g.
            ``add_column items.price``; or ``("skipped", [reason])`` when env.py sets
            no ``target_metadata``.

        Raises:
            BrokenProject: env.py fails in autogenerate mode.
        """
        from alembic import command  # noqa: PLC0415
        from alembic.util import exc  # noqa: PLC0415

        from runner.drivers import _alembic_models  # noqa: PLC0415  (verify only)

        self._use_url(url)
        self.config.attributes["connection"] = _alembic_env.SharedConnection(connection)
        found: list[str] = []
        try:
            with (
                logs.env_py_file_config_ignored(),
                project_code(),
                _alembic_env.unwrapping_configure() as configured,
            ):
                try:
                    command.check(self.config)
                except exc.AutogenerateDiffsDetected as error:
                    found = [_operation(diff) for diff in error.diffs if not _about(diff, ignored)]
                # Then every model module imported: a table that appears only now, env.py never registers.
                status, lines = _alembic_models.unregistered(
                    configured.get("target_metadata"), skip_under=[Path(self.script.dir)]
                )
        except exc.CommandError as error:
            if "MetaData" in str(error):  # env.py configures no target_metadata
                return "skipped", ["env.py sets no target_metadata, so there are no models to compare"]
            raise BrokenProject(f"env.py failed in autogenerate mode (alembic check): {error}") from None
        except Exception as error:
            raise BrokenProject(f"env.py failed in autogenerate mode (alembic check): {where(error)}") from None
        if found or status == "failed":
            return "failed", found + (lines if status == "failed" else [])
        return "passed", lines  # a registration check that could not run says why

    def _use_url(self, url: URL) -> None:
        """Give env.py the run's URL as ``sqlalchemy.url``, for an env.py that builds its own engine."""
        # configparser interpolation: a literal % must be doubled (Alembic docs, Config.set_main_option).
        self.config.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))

    def upgrade(self, options: MigrateOptions) -> None:
        """Run the project's env.py to upgrade the database to ``options.target``; see :meth:`_run_env`."""
        self._run_env(self.script._upgrade_revs, options)

    def downgrade(self, options: MigrateOptions) -> None:
        """Run the project's env.py to downgrade the database to ``options.target`` (as ``alembic downgrade``)."""
        self._run_env(self.script._downgrade_revs, options)

    def _run_env(self, plan: Callable[[str, str], Sequence[Any]], options: MigrateOptions) -> None:
        """Run the project's env.py over the steps ``plan(target, heads)`` gives.

        The URL is set as ``sqlalchemy.url`` and the open connection is passed as
        ``config.attributes["connection"]`` (Alembic cookbook, "Sharing a
        Connection"), so both kinds of env.py work.

        Args:
            plan: ``ScriptDirectory._upgrade_revs`` or ``_downgrade_revs``, what
                Alembic's own ``upgrade`` and ``downgrade`` commands hand to
                ``run_migrations`` (private; ``tests/test_downgrade.py`` pins both).
            options: the connection, URL, target, version table and the runner's callbacks
                (:class:`runner.drivers.MigrateOptions`); ``in_transaction`` is called from
                Alembic's ``on_version_apply``, so the ledger row commits with the revision.

        Raises:
            MigrationFailed: a revision raised (``BaseException`` included); the message names it.
            BrokenProject: env.py failed before any revision ran.
            ConnectionLost: the connection was lost while migrating.
            Stopped: the runner's own signal or deadline, with the running revision attached.

        """
        from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

        from runner import database  # noqa: PLC0415

        connection, url, target, version_table = options.connection, options.url, options.target, options.version_table
        on_applied, before_each, in_transaction = options.on_applied, options.before_each, options.in_transaction
        self._use_url(url)
        self.config.attributes["connection"] = _alembic_env.SharedConnection(connection)
        running: list[Script] = []
        started_any: list[bool] = []

        def steps(heads: tuple[str, ...], _: Any) -> Iterator[MigrationStep]:
            # run_migrations() asks for the next step only after the previous
            # one's transaction ended, so the code after `yield` sees it committed.
            stopping.migrating()  # in whichever thread env.py runs them (runner.stopping)
            for step in plan(target, _heads_arg(heads)):
                stopping.checkpoint()
                own(before_each, step.revision.revision)
                running[:] = [step.revision]
                started_any.append(True)
                started = time.monotonic()
                database.transaction_watch.start()
                yield step
                database.transaction_watch.stop()
                running.clear()
                done = step.revision
                own(on_applied, Applied(done.revision, done.doc, time.monotonic() - started, _down_revisions(done)))

        def version_applied(*, ctx: MigrationContext, step: Any, **_: Any) -> None:
            stopping.checkpoint()  # the last safe point before the revision commits
            database.transaction_watch.stop()  # Alembic's own commit of this step follows
            assert ctx.connection is not None  # noqa: S101  (online mode always has one)
            transactional = not database.transaction_watch.ended
            own(in_transaction, ctx.connection.execute, step.up_revision_id, transactional)

        environment = EnvironmentContext(
            self.config, self.script, fn=steps, as_sql=False, starting_rev=None, destination_rev=target
        )
        configure = environment.configure

        def configure_with_defaults(*args: Any, **kwargs: Any) -> None:
            _set_defaults(kwargs, version_table, version_applied)
            own(
                lambda: _alembic_env.check_configured(
                    kwargs, ours=connection, version_table=version_table, timeouts=self._session_timeouts
                )
            )
            configure(*args, **kwargs)

        # An instance attribute, not a subclass: alembic.context proxies only
        # the EnvironmentContext class itself.
        environment.configure = configure_with_defaults  # type: ignore[method-assign]
        try:
            with environment, logs.env_py_file_config_ignored(), project_code(), stopping.env_py_running():
                self.script.run_env()
            if stopping.cause() is not None:  # a stop the migrating thread never reached a safe point for
                raise cast(Stopped, stopping.cause())
        except CallbackFailed as callback:
            raise callback.error from None  # the lock check's ConnectionLost / LockLost, or a bug of ours
        except BaseException as error:  # project code: SystemExit, KeyboardInterrupt and GeneratorExit too
            raise self._ended_by(error, running[0] if running else None, url, started=bool(started_any)) from None
        finally:
            database.transaction_watch.stop()
            self.config.attributes.pop("connection", None)

    def _ended_by(self, error: BaseException, failed: Script | None, url: URL, *, started: bool) -> BaseException:
        """What ended env.py's run: our own stop, or else project code's failure (:meth:`_failure`).

        Our own signal or deadline, raised here or in env.py's worker thread, keeps its code
        130/143/75 whatever it surfaced as (a cancelled statement's error, an event loop's wrapping).
        """
        stopped = error if isinstance(error, Stopped) else stopping.cause()
        if stopped is None:
            failure = self._failure(error, failed, url, started=started)
            failure.__cause__ = error
            return failure
        if failed is not None:
            stopped.revision = failed.revision
            stopped.transactional = self._transactional(url)
        return stopped

    def _transactional(self, url: URL) -> bool:
        # MySQL commits DDL as it goes; a revision that ended its own transaction
        # (a COMMIT, an autocommit_block) has committed what came before.
        from runner import database  # noqa: PLC0415

        return database.family(url) != "mysql" and not database.transaction_watch.ended

    def _failure(self, error: BaseException, failed: Script | None, url: URL, *, started: bool) -> RunnerError:
        """What a project-code exception means: a lost connection, a broken env.py, or a failed revision."""
        from runner import database  # noqa: PLC0415

        failure = database.classify(error)
        if failure.connection:
            return ConnectionLost(
                f"connection lost while applying revision {failed.revision if failed else None} "
                f"(SQLSTATE {failure.code}): {database.error_message(error)}"
            )
        message = database.error_message(error)
        if isinstance(error, SystemExit | KeyboardInterrupt | GeneratorExit):
            message = f"{type(error).__name__}({error.args[0] if error.args else ''}) raised by project code"
        elif failure.code is None and not message.startswith(type(error).__name__):
            message = f"{type(error).__name__}: {message}"
        if not started and failure.code is None:
            return BrokenProject(f"env.py {self.script.env_py_location}: {message}{where(error)}")
        if failed is None:
            return MigrationFailed(message, revision=None, sqlstate=failure.code)
        transactional = self._transactional(url)
        if not transactional:
            message += "; this revision ran outside a transaction, so its changes may be partly applied"
        return MigrationFailed(
            message,
            revision=failed.revision,
            sqlstate=failure.code,
            transactional=transactional,
            statement=statement_of(error),
            location=line_in(error, failed.path),
        )


def _about(diff: Any, tables: Sequence[str]) -> bool:
    """Whether an autogenerate difference concerns one of ``tables`` (the table, or a column or index of it)."""
    if isinstance(diff, list):  # modify_* differences come as a list of tuples
        return all(_about(part, tables) for part in diff)
    names: set[str | None] = set()
    for part in diff[1:]:
        table = getattr(part, "table", None)  # a Column, an Index, a constraint
        if isinstance(part, str):
            names.add(part)
        elif table is not None:
            names.add(getattr(table, "name", None))
        elif hasattr(part, "columns"):  # a Table
            names.add(getattr(part, "name", None))
    return bool(names & set(tables))


def _operation(diff: Any) -> str:
    """One autogenerate difference as a line: ``add_column items.price``, ``add_table orders``."""
    if isinstance(diff, list):  # modify_* differences come as a list of tuples
        return "; ".join(_operation(part) for part in diff)
    kind, *rest = diff
    names = []
    for part in rest:
        name = getattr(part, "name", None)
        if name is not None:
            names.append(str(name))
        elif isinstance(part, str):
            names.append(part)
    return f"{kind} {'.'.join(names)}".strip()


class _Rehearsal:
    """The hooks of one :meth:`AlembicExecutor.rehearse`: its steps, the statement events, the rolled-back one."""

    def __init__(self, project: AlembicExecutor, target: str, version_table: VersionTable, tracer: Tracer) -> None:
        self.project, self.target, self.version_table, self.tracer = project, target, version_table, tracer
        self.skipped: list[tuple[str, str]] = []
        self.running: list[str] = []
        self.transactions: list[Any] = []
        self.plan: list[Any] = []
        self.last_started: str | None = None
        self.configure: Callable[..., None] = lambda *_, **__: None

    def steps(self, heads: tuple[str, ...], _: Any) -> Iterator[Any]:
        plan = self.plan = list(self.project.script._upgrade_revs(self.target, _heads_arg(heads)))
        try:
            for number, step in enumerate(plan):
                revision = step.revision.revision
                if not self.project._transactional_step(revision, mysql=False):
                    why = "runs outside a transaction (autocommit_block), so it cannot be rolled back: not run"
                    self.skipped.append((revision, why))
                    later = plan[number + 1 :]
                    self.skipped.extend((s.revision.revision, "comes after a revision that was not run") for s in later)
                    return
                self.running[:] = [revision]
                self.last_started = revision  # kept when the generator is closed by an error
                self.tracer.revision = revision
                yield step
                self.tracer.revision = None
        finally:
            self.running.clear()
            self.roll_back()  # the end of the rehearsal, whatever env.py does next

    def configure_rolled_back(self, *args: Any, **kwargs: Any) -> None:
        from sqlalchemy import event  # noqa: PLC0415

        connection = kwargs.get("connection")
        if connection is None:
            raise ConfigError(
                "plan --trace: env.py configured no connection in online mode, so its statements cannot be "
                "rolled back; nothing was run"
            )
        if not self.transactions:
            event.listen(connection, "before_cursor_execute", self._before)
            event.listen(connection, "after_cursor_execute", self._after)
            event.listen(connection, "commit", self._commit)
            cursor = connection.connection.dbapi_connection.cursor()  # an async driver's synchronous adapter too
            try:
                self.tracer.begin(cursor)
            finally:
                cursor.close()
            self.transactions.append(connection.begin())
        kwargs.setdefault("version_table", self.version_table.name)
        kwargs.setdefault("version_table_schema", self.version_table.schema)
        self.configure(*args, **kwargs)

    def _before(self, _: Any, __: Any, statement: str, *___: Any) -> None:
        from runner import trace  # noqa: PLC0415

        trace.guard(statement)  # before the server sees it: the trace must never commit
        self.tracer.before()

    def _commit(self, _: Any) -> None:
        from runner import trace  # noqa: PLC0415

        raise trace.NotTraceable("it commits through its connection (a commit() of its own)")

    def stopped(self, stop: Any) -> None:
        """The running revision and every one after it are not traced, saying why; what it showed is dropped."""
        from runner import trace  # noqa: PLC0415

        revision = self.last_started
        if revision is None:
            return
        names = [step.revision.revision for step in self.plan]
        later = names[names.index(revision) + 1 :] if revision in names else []
        self.skipped += trace.not_traced(self.tracer, stop, revision, later, noun="revision")

    def _after(self, connection: Any, _: Any, statement: str, *__: Any) -> None:
        # The DB-API connection (for asyncpg or async psycopg, SQLAlchemy's adapter of it): same transaction,
        # and no SQLAlchemy events, so the tracer's own queries are never traced.
        own_cursor = connection.connection.dbapi_connection.cursor()
        try:
            self.tracer.after(own_cursor, statement)
        finally:
            own_cursor.close()

    def roll_back(self) -> None:
        for transaction in self.transactions:
            with contextlib.suppress(Exception):
                if transaction.is_active:
                    transaction.rollback()


def _set_defaults(kwargs: dict[str, Any], version_table: VersionTable, version_applied: Callable[..., None]) -> None:
    """The runner's defaults for env.py's ``context.configure()`` (module docstring), and its callback added."""
    kwargs.setdefault("transaction_per_migration", True)
    kwargs.setdefault("version_table", version_table.name)
    kwargs.setdefault("version_table_schema", version_table.schema)
    theirs = kwargs.get("on_version_apply") or ()
    kwargs["on_version_apply"] = [*(theirs if isinstance(theirs, list | tuple) else [theirs]), version_applied]
