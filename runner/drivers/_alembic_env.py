"""What the runner hands a project's ``env.py``, and what it checks of the connection ``env.py`` migrates on.

Real ``env.py`` files reach the database in three ways:

- the Alembic cookbook's "Sharing a Connection": ``config.attributes["connection"]``
  is used as a Connection (``context.configure(connection=connectable)``);
- pytest-alembic's pattern: the same attribute is used as an Engine
  (``with connectable.connect() as connection:``);
- an engine of their own, built from ``sqlalchemy.url`` or from the application's
  settings, which may name another database than ``MIGRATION_DATABASE_URL``.

:class:`SharedConnection` serves the first two with the runner's open connection.
:func:`check_configured` runs inside ``context.configure()``, before any revision:
it refuses (78) a version table other than the settings' and a connection to
another database than the one the runner locked, and gives a connection of the
same database the runner's session settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, NamedTuple

from runner import sessions
from runner.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from runner.drivers import VersionTable


class SharedConnection:
    """``config.attributes["connection"]``: the runner's open connection, usable as a Connection or an Engine.

    ``connect()`` and ``begin()`` hand back the same connection and never close it
    or start a transaction on it (the runner keeps one transaction per revision);
    every other attribute is the connection's own. ``context.configure()`` is given
    the connection itself (:func:`unwrap`), so ``op.get_bind()`` is a real
    ``Connection`` that ``sqlalchemy.inspect()`` takes.

    Args:
        connection: the runner's migration connection, outside any transaction.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @property
    def connection(self) -> Connection:
        """The shared connection."""
        return self._connection

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """``Engine.connect()`` as pytest-alembic's ``env.py`` uses it: the shared connection, left open."""
        yield self._connection

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """``Engine.begin()``: the shared connection, with no transaction of its own (one per revision follows)."""
        yield self._connection

    def dispose(self) -> None:
        """``Engine.dispose()``, which many ``env.py`` files call at the end: nothing to dispose of here."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def unwrap(value: Any) -> Any:
    """The connection behind a :class:`SharedConnection`; anything else as it is."""
    return value.connection if isinstance(value, SharedConnection) else value


@contextlib.contextmanager
def unwrapping_configure() -> Iterator[dict[str, Any]]:
    """While an Alembic command runs ``env.py`` (``alembic check``), ``configure()`` gets the shared connection itself.

    The command builds its own ``EnvironmentContext``, whose ``configure`` ``alembic.context``
    binds when it is entered; patching the class for the call's duration reaches it.

    Yields:
        The keyword arguments env.py passed to ``configure()`` (e.g. ``target_metadata``), once it has.
    """
    from alembic.runtime.environment import EnvironmentContext  # noqa: PLC0415

    original = EnvironmentContext.configure
    configured: dict[str, Any] = {}

    def configure(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["connection"] = unwrap(kwargs.get("connection"))
        configured.update(kwargs)
        original(self, *args, **kwargs)

    EnvironmentContext.configure = configure  # type: ignore[method-assign]
    try:
        yield configured
    finally:
        EnvironmentContext.configure = original  # type: ignore[method-assign]


class SessionTimeouts(NamedTuple):
    """``MIGRATION_DDL_LOCK_TIMEOUT`` and ``MIGRATION_STATEMENT_TIMEOUT``, seconds."""

    lock: float
    statement: float


def check_configured(
    kwargs: MutableMapping[str, Any], *, ours: Connection, version_table: VersionTable, timeouts: SessionTimeouts
) -> None:
    """Check what ``env.py`` passed to ``context.configure()`` before any revision runs; fix what can be fixed.

    Args:
        kwargs: ``configure()``'s keyword arguments, with the runner's defaults already set;
            a :class:`SharedConnection` in ``connection`` is replaced by the connection.
        ours: the runner's migration connection (the database it locked and reads).
        version_table: the version table the settings name.
        timeouts: the session timeouts a connection of env.py's own to the same database is given.

    Raises:
        ConfigError: ``env.py`` configures another version table or schema than the settings,
            or migrates on a connection to another database than the runner's.
    """
    kwargs["connection"] = theirs = unwrap(kwargs.get("connection"))
    configured = (kwargs.get("version_table"), kwargs.get("version_table_schema"))
    if configured != (version_table.name, version_table.schema):
        raise ConfigError(
            f"env.py configures version_table={configured[0]!r}, version_table_schema={configured[1]!r}, but the "
            f"settings name {version_table.name!r}, {version_table.schema!r}: set MIGRATION_VERSION_TABLE and "
            "MIGRATION_VERSION_TABLE_SCHEMA to what env.py uses, so that the runner reads and records the same table"
        )
    if theirs is None or theirs is ours or not hasattr(theirs, "exec_driver_sql"):
        return
    if _identity(theirs) != _identity(ours):
        raise ConfigError(
            f"env.py migrates on its own connection to {_shown(theirs)}, but the runner locked and reads "
            f"{_shown(ours)}: make env.py use the URL the runner gives it (config.get_main_option('sqlalchemy.url') "
            "or config.attributes['connection']), or point MIGRATION_DATABASE_URL at the database env.py migrates"
        )
    _give_session_settings(ours, theirs, timeouts)


def _shown(connection: Connection) -> str:
    """The connection's URL without its password (secret query parameters are cut by the logs' redaction)."""
    return connection.engine.url.render_as_string(hide_password=True)


def _identity(connection: Connection) -> tuple[Any, ...]:
    """What tells one database of one server from another, as far as this session may read it.

    PostgreSQL: the database's name, the postmaster's start time, and the cluster's system
    identifier where ``pg_control_system()`` may be read. MySQL: the schema, host name,
    port and data directory. SQLite: the main database's file.
    """
    with _read_only(connection):
        name = connection.dialect.name
        if name == "postgresql":
            found = connection.exec_driver_sql("SELECT current_database(), pg_postmaster_start_time()").one()
            try:
                with connection.begin_nested():
                    system = connection.exec_driver_sql("SELECT system_identifier FROM pg_control_system()").scalar()
            except Exception:  # not granted to this role: the start time tells servers apart
                system = None
            return (*found, system)
        if name in ("mysql", "mariadb"):
            return tuple(connection.exec_driver_sql("SELECT DATABASE(), @@hostname, @@port, @@datadir").one())
        if name == "sqlite":
            rows = connection.exec_driver_sql("PRAGMA database_list").all()
            return tuple(row[2] for row in rows if row[1] == "main")
        return (str(connection.engine.url),)


def _give_session_settings(ours: Connection, theirs: Connection, timeouts: SessionTimeouts) -> None:
    """Give ``theirs`` the runner's session settings, so that its revisions are bounded as the runner's own are.

    PostgreSQL: ``lock_timeout``, ``statement_timeout`` and ``application_name`` (read from ``ours``);
    MySQL: ``lock_wait_timeout``. Session-level, so they outlast the transaction they are set in.
    """
    from sqlalchemy import sql  # noqa: PLC0415

    name = ours.dialect.name
    if name == "postgresql":
        with _read_only(ours):
            application_name = ours.exec_driver_sql("SHOW application_name").scalar()
        settings = {
            "lock_timeout": f"{sessions.milliseconds(timeouts.lock)}ms",
            "statement_timeout": f"{sessions.milliseconds(timeouts.statement)}ms",
            "application_name": str(application_name),
        }
        with _read_only(theirs, keep=True):
            for setting, value in settings.items():
                theirs.execute(sql.text("SELECT set_config(:name, :value, false)"), {"name": setting, "value": value})
    elif name in ("mysql", "mariadb") and timeouts.lock > 0:
        with _read_only(theirs, keep=True):
            theirs.exec_driver_sql(f"SET SESSION lock_wait_timeout = {sessions.whole_seconds(timeouts.lock)}")


@contextlib.contextmanager
def _read_only(connection: Connection, *, keep: bool = False) -> Iterator[None]:
    """Leave ``connection`` as outside a transaction as it was: what these reads began ends with them.

    Alembic reads an open transaction as the caller's own and then runs no transaction per
    revision, so none may be left behind. ``keep`` commits (session settings survive either way).
    """
    began = not connection.in_transaction()
    try:
        yield
    finally:
        if began and connection.in_transaction():
            if keep:
                connection.commit()
            else:
                connection.rollback()
