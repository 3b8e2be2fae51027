"""The :class:`Run` context every command takes: settings, report, the project, the database's revisions, the ledger."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, Connection, Engine

from runner import __version__, database, ledger, locks, sessions
from runner.commands.start import Start
from runner.drivers import Driver, VersionTable
from runner.errors import ConfigError
from runner.target import Target, load_project


@dataclass
class Run(Start):
    """What one invocation knows before it touches the database: its :class:`Start`, then the project.

    Attributes:
        preloaded: the project, if the no-op check loaded it already.
    """

    preloaded: Driver | None = None
    _driver: Driver | None = field(default=None, init=False, repr=False)
    _before_apply_ran: bool = field(default=False, init=False, repr=False)

    @classmethod
    def after(cls, start: Start, *, preloaded: Driver | None, target: Target | None) -> Run:
        """The run context of ``start``, with the project and target the no-op check may have loaded."""
        fields = {name: getattr(start, name) for name in start.__dataclass_fields__}
        return cls(**{**fields, "target": target or start.target}, preloaded=preloaded)

    def refuse_in_production(self, *, allowed: bool, refusal: str) -> None:
        """Stop a command that production allows only by its own setting (``MIGRATION_ALLOW_*``).

        Raises:
            ConfigError: ``refusal``, in the production environment unless ``allowed``.
        """
        if self.settings.environment == "production" and not allowed:
            raise ConfigError(refusal)

    @property
    def cwd(self) -> Path:
        """The working directory (alembic.ini and relative paths)."""
        return self.settings.cwd

    @property
    def application_name(self) -> str:
        """How this runner's connections appear in ``pg_stat_activity``: namespace/pod and run id."""
        return sessions.application_name(host=self.host, namespace=self.settings.pod_namespace, run_id=self.run_id)

    def connect(self, engine: Engine, *, retry: bool = True) -> contextlib.AbstractContextManager[Connection]:
        """Open a connection, retried for ``MIGRATION_CONNECT_TIMEOUT`` seconds unless ``retry`` is False."""
        return database.connect(
            engine,
            retry_for=self.settings.connect_timeout if retry else 0.0,
            on_retry=lambda: self.report.retried("connect"),
        )

    def engine(self, url: URL) -> Engine:
        """An engine for ``url`` named as this run, each connection attempt bounded by ``MIGRATION_CONNECT_TIMEOUT``."""
        return database.make_engine(
            url,
            application_name=self.application_name,
            attempt_timeout=database.attempt_seconds(self.settings.connect_timeout),
        )

    def migration_url(self) -> URL:
        """The database URL with each revision's session timeouts and TCP bounds, so env.py's own engine has them."""
        url = database.with_network_bounds(self.target.url)
        lock_ms = sessions.milliseconds(self.settings.ddl_lock_timeout)
        if database.family(url) == "postgresql":
            statement_ms = sessions.milliseconds(self.settings.statement_timeout)
            # Asynchronous commits: a revision's commit does not wait for its WAL flush; one
            # synchronous commit after the last revision makes them all durable (Ledger.make_durable).
            return database.with_session_settings(
                url,
                {"lock_timeout": str(lock_ms), "statement_timeout": str(statement_ms), "synchronous_commit": "off"},
            )
        if database.family(url) == "mysql" and lock_ms:
            return database.with_session_settings(
                url, {"lock_wait_timeout": str(sessions.whole_seconds(lock_ms / 1000))}
            )
        return url

    @property
    def version_table(self) -> VersionTable:
        """Where the project's tool records what is applied."""
        return self.project().version_table

    def project(self) -> Driver:
        """Load the project with its driver and validate the target against it; later calls reuse it.

        A project that configures its own database (Django's ``DATABASES``) gives
        the URL here, unless the settings name one; its secrets are redacted from
        then on.

        Raises:
            ConfigError: the project or the target is unusable.

        """
        if self._driver is not None:
            return self._driver
        if self.preloaded is not None:
            project = self.preloaded
        else:
            project, self.target = load_project(self.settings, self.target)
        self._driver = project
        if self.report.direction == "up":  # a downgrade's target is resolved against the database
            self.report.target = list(project.target_revisions(self.settings.target))
        self.report.heads = list(project.heads())
        return project

    def read_current(self, connection: Connection) -> tuple[str, ...]:
        """The database's current revisions (Django: every applied migration)."""
        project = self.project()
        revisions = project.read_applied(connection, self.version_table)
        self.report.database_at(project.summary(revisions))
        return revisions

    def shown(self, current: Sequence[str]) -> list[str]:
        """``current`` as logs show it (Django: the last applied migration per app)."""
        return list(self.project().summary(current))

    def lock_key(self, connection: Connection) -> int:
        """The advisory lock key: ``MIGRATION_LOCK_KEY``, or one derived from what the server reports.

        The database name comes from the server (:func:`database.server_database_name`),
        so two URL forms of one database share one key. The schema is the
        configured one, as in every earlier version: for a database reached the
        usual way the key is byte-for-byte the one older runners derive, so
        both exclude each other during a rolling upgrade.
        """
        if self.settings.lock_key is not None:
            return locks.parse_key(self.settings.lock_key)
        return locks.derive_key(
            database_name=database.server_database_name(connection),
            schema=self.version_table.schema,
            version_table=self.version_table.name,
        )

    def ledger(self) -> ledger.Ledger:
        """The ledger of this run's database (``MIGRATION_HISTORY_TABLE``, in the version table's schema)."""
        settings = self.settings
        return ledger.Ledger(
            table=ledger.history_table(settings.history_table, self.version_table.schema),
            family=database.family(self.target.url),
            tool=self.project().tool,
            scope=ledger.scope_of(self.version_table.name, self.version_table.schema),
            run_id=self.run_id,
            host=self.host,
            namespace=settings.pod_namespace,
            node=settings.node_name,
            version=__version__,
            direction=self.report.direction,
            noop_reverts=frozenset(settings.noop_downgrades),
        )


def known_revisions(project: Driver) -> set[str]:
    """Every revision of the project, by the ids the reports use (Alembic ``0002``, Django ``shop.0002_slug``)."""
    return {step.revision for step in project.pending((), "heads")}


def require_known_revisions(
    known: set[str], named: Sequence[tuple[str, Sequence[str]]], *, nothing: str = "nothing was changed"
) -> None:
    """Every revision a setting names is one of the project's: a typo would silently mean nothing.

    Args:
        known: the project's revisions (:func:`known_revisions`).
        named: ``(setting, revisions)`` pairs, e.g. ``("MIGRATION_NOOP_DOWNGRADES", ["0003"])``.
        nothing: how the message ends: what was left untouched.

    Raises:
        ConfigError: the first setting that names an unknown revision, with one the project has as an example.
    """
    for setting, revisions in named:
        unknown = [revision for revision in revisions if revision not in known]
        if unknown:
            raise ConfigError(
                f"{setting} names {', '.join(unknown)}, which this project has no revision of "
                f"(they are written like {min(known, default='none')}); {nothing}"
            )
