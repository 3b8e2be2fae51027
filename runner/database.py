"""Database URLs, engines, connections with retries, error classification, and the version table."""

from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy
import tenacity
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool, Pool

from runner import sessions, stopping, urls
from runner.errors import ConfigError, ConnectionLost, DatabaseUnavailable
from runner.logs import get_logger
from runner.urls import ASYNC_DRIVERS, DatabaseUrl

ATTEMPT_TIMEOUT_SECONDS = 10
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# SQLSTATEs that mean "the connection is gone", not "the statement is wrong":
# class 08 and 57P01..57P03 (PostgreSQL docs, "Appendix A. Error Codes").
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")
# libpq reports a failed connection as text only, even when the server sent a
# FATAL with an SQLSTATE; these are the ones retrying cannot fix, or can.
_LIBPQ_STARTUP_FAILURES = (
    (re.compile(r"password authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"), "28000", False),
    (re.compile(r"database \".*\" does not exist"), "3D000", False),
    # Settings the server or libpq refuses: the same every time (options=-c..., sslmode, port).
    (re.compile(r"unrecognized configuration parameter|invalid value for parameter"), "22023", False),
    (re.compile(r"server does not support SSL|SSL was required|invalid sslmode|invalid port number"), "08P01", False),
    (re.compile(r"invalid (connection option|integer value|.* value for)"), "22023", False),
    (re.compile(r"the database system is (starting up|shutting down|in recovery mode|not yet)"), "57P03", True),
)
# MySQL client and server error numbers (MySQL docs, "Error Messages and Common Problems").
_MYSQL_CONNECTION_ERRNOS = {2002, 2003, 2005, 2006, 2013, 2055}
_MYSQL_LOGIN_ERRNOS = {1044: "42000", 1045: "28000", 1049: "3D000", 1698: "28000"}


@dataclass(frozen=True)
class Failure:
    """What a database error means for the caller.

    Attributes:
        code: the SQLSTATE, or the class inferred when the driver gave none
            (``08001`` could not connect, ``08006`` connection lost).
        connection: a connection-class failure: reconnecting may help.
    """

    code: str | None
    connection: bool


def parse_url(raw: str) -> URL:
    """Parse and normalise a database URL into SQLAlchemy's ``URL`` (checked by :func:`runner.urls.parse`).

    Raises:
        ValueError: as :func:`runner.urls.parse`; the message never repeats the URL.
    """
    checked = urls.parse(raw)
    return sqlalchemy.make_url(raw.strip()).set(drivername=checked.drivername)


def light(url: URL) -> DatabaseUrl:
    """SQLAlchemy's ``URL`` as :class:`runner.urls.DatabaseUrl`."""
    query = {key: (value,) if isinstance(value, str) else tuple(value) for key, value in url.query.items()}
    return DatabaseUrl(url.drivername, url.username, url.password, url.host, url.port, url.database, query)


def is_async(url: URL) -> bool:
    """The URL names an asyncio driver (asyncpg, aiomysql, asyncmy, aiosqlite)."""
    return url.drivername.partition("+")[2] in ASYNC_DRIVERS


def sync_url(url: URL) -> URL:
    """The same database through the runner's own sync driver (psycopg, PyMySQL, pysqlite).

    The lock, the version reads, ``check`` and ``wait`` never need the
    project's async driver: only ``env.py`` gets the URL as the user gave it.
    """
    if not is_async(url):
        return url
    backend = url.drivername.partition("+")[0]
    sync = {"postgresql": "psycopg", "mysql": "pymysql", "sqlite": "pysqlite"}[family(url)]
    return url.set(drivername=f"{backend}+{sync}")


def family(url: URL) -> str:
    """The database family of a normalised URL: ``postgresql``, ``mysql`` or ``sqlite``."""
    return urls.BACKENDS[url.drivername.partition("+")[0]][0]


def redact(url: URL) -> str:
    """Render a URL for messages: as the user wrote it (:func:`urls.as_written`), password and secrets removed."""
    return urls.as_written(light(url))


def secrets_of(url: URL) -> list[str]:
    """Every secret a URL carries, in each form it may take in a message (:meth:`DatabaseUrl.secrets`)."""
    return light(url).secrets()


def database_name(url: URL) -> str:
    """The database a URL points at: the database name (or its ``dbname`` parameter) or the SQLite path."""
    return light(url).database_name


def with_session_settings(url: URL, settings: Mapping[str, str]) -> URL:
    """Add session settings to a URL so every connection made from it, even env.py's, starts with them.

    PostgreSQL: ``-c name=value`` in libpq's ``options`` parameter (PostgreSQL
    docs, "34.1.2 Parameter Key Words"), after any options the URL already has.
    MySQL: a ``SET SESSION`` as PyMySQL's ``init_command``.

    Args:
        url: a normalised URL.
        settings: PostgreSQL GUC or MySQL system variable names to values.

    Returns:
        The URL with the settings in its query; SQLite URLs come back unchanged.
    """
    if not settings:
        return url
    if url.drivername.endswith("+asyncpg"):
        # asyncpg takes no libpq options: the settings are SET on each new connection instead.
        _on_connect_settings.update(settings)
        return url
    if family(url) == "postgresql":
        ours = " ".join(f"-c {name}={value}" for name, value in settings.items())
        existing = url.query.get("options")
        merged = f"{existing} {ours}" if isinstance(existing, str) else ours
        return url.update_query_dict({"options": merged})
    if family(url) == "mysql":
        assignments = ", ".join(f"{name} = {value}" for name, value in settings.items())
        return url.update_query_dict({"init_command": f"SET SESSION {assignments}"})
    return url


def with_network_bounds(url: URL) -> URL:
    """Give a PostgreSQL URL client-side TCP keepalives and ``tcp_user_timeout``, unless it sets its own.

    In the URL rather than in ``connect_args``, so that an ``env.py`` building
    its own engine from ``sqlalchemy.url`` gets them too: a dead peer or a
    blackholed path then ends the connection instead of hanging the run.
    """
    if family(url) != "postgresql" or url.drivername.endswith("+asyncpg"):
        return url  # asyncpg takes no libpq parameters
    return url.update_query_dict({k: v for k, v in urls.PG_NETWORK_BOUNDS.items() if k not in url.query})


@functools.cache
def _sqlite_transactional_ddl() -> None:
    """Make SQLite DDL transactional in every engine of this process, env.py's included.

    pysqlite's legacy transaction handling sends BEGIN only before DML, so a
    revision's CREATE TABLE would commit on its own. This is SQLAlchemy's
    recipe (SQLAlchemy docs, "Serializable isolation / Savepoints /
    Transactional DDL"): turn off pysqlite's handling and emit BEGIN ourselves.
    """

    def no_implicit_transactions(dbapi_connection: Any, _: Any) -> None:
        # pysqlite, or SQLAlchemy's adapter around aiosqlite (SQLAlchemy docs, "Serializable isolation /
        # Savepoints / Transactional DDL (asyncio version)").
        if isinstance(dbapi_connection, sqlite3.Connection) or _adapts(dbapi_connection, "aiosqlite"):
            dbapi_connection.isolation_level = None

    def begin(connection: Connection) -> None:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN")

    event.listen(Pool, "connect", no_implicit_transactions)
    event.listen(Engine, "begin", begin)


def attempt_seconds(connect_timeout: float) -> float:
    """How long one connection attempt may take: ``MIGRATION_CONNECT_TIMEOUT``, at most 10 s; 0 (try once) is 10 s.

    So the whole wait for a connection is at most ``connect_timeout`` plus one attempt: the retries stop
    before a wait would pass ``connect_timeout``, and the last attempt is bounded too.
    """
    return ATTEMPT_TIMEOUT_SECONDS if connect_timeout <= 0 else min(ATTEMPT_TIMEOUT_SECONDS, connect_timeout)


def make_engine(
    url: URL,
    *,
    application_name: str,
    autocommit: bool = False,
    keepalives: bool = False,
    attempt_timeout: float = ATTEMPT_TIMEOUT_SECONDS,
) -> Engine:
    """Create an engine without a connection pool (a run holds few connections).

    Args:
        url: a normalised URL from :func:`parse_url`.
        application_name: names the connection in ``pg_stat_activity`` (PostgreSQL)
            or as ``program_name`` (MySQL), so a waiting runner can name the holder.
        autocommit: run every statement outside a transaction (for the lock
            connection, which must never sit inside a transaction).
        keepalives: also ask the server for TCP keepalives (``tcp_keepalives_*``),
            so it drops the session of a dead node, and its advisory lock, within
            ~25 s. The client side always has them (:func:`with_network_bounds`).
        attempt_timeout: seconds one connection attempt may take.

    Returns:
        A SQLAlchemy engine; connecting is lazy.
    """
    url = sync_url(url)
    connect_args: dict[str, object] = {}
    timeout = max(2, math.ceil(attempt_timeout))  # libpq takes whole seconds, treats 1 as 2 and 0 as forever
    _track_connections()
    if family(url) == "postgresql":
        name = application_name.encode()[: sessions.APPLICATION_NAME_MAX_BYTES].decode(errors="ignore")
        connect_args = {"application_name": name, "connect_timeout": timeout}
        url = with_network_bounds(url)
        if keepalives:
            url = with_session_settings(
                url, {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
            )
    elif family(url) == "mysql":
        # PyMySQL's connect_timeout covers the TCP connect only: the server's greeting and the login are reads,
        # bounded by read_timeout, which is lifted again once connected (_unbound_reads) so that a long DDL
        # statement is never cut off.
        bound = max(1.0, attempt_timeout)
        connect_args = {
            "program_name": application_name,
            "connect_timeout": bound,
            "read_timeout": bound,
            "write_timeout": bound,
        }
        _unbound_reads_once()
    elif family(url) == "sqlite":
        _sqlite_transactional_ddl()
        connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}  # pysqlite's busy timeout, seconds
    options: dict[str, object] = {"poolclass": NullPool, "connect_args": connect_args}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    return sqlalchemy.create_engine(url, **options)


@functools.cache
def _unbound_reads_once() -> None:
    """Lift PyMySQL's read and write timeouts once a connection is open (see :func:`make_engine`).

    PyMySQL has no public way to change them after connecting; ``_read_timeout`` and ``_write_timeout``
    are what its reads and writes consult before each socket operation (pymysql/connections.py).
    tests/test_careless_inputs.py pins both attributes.
    """

    def unbound(dbapi_connection: Any, _: Any) -> None:
        if type(dbapi_connection).__module__.startswith("pymysql"):
            dbapi_connection._read_timeout = None
            dbapi_connection._write_timeout = None

    event.listen(Pool, "connect", unbound)


# Session settings for drivers that take none in the URL (asyncpg), SET when each connection opens.
_on_connect_settings: dict[str, str] = {}


def _is_mysql(driver_connection: Any) -> bool:
    return type(driver_connection).__module__.split(".")[0] in ("pymysql", "aiomysql", "asyncmy")


def _adapts(dbapi_connection: Any, driver: str) -> bool:
    """Whether ``dbapi_connection`` is SQLAlchemy's sync adapter around an asyncio driver."""
    return type(dbapi_connection).__name__.startswith(f"AsyncAdapt_{driver}")


class _TransactionWatch:
    """Notices when a revision's own transaction ends early (a ``COMMIT`` in the revision, an autocommit block)."""

    watching = False
    ended = False

    def start(self) -> None:
        self.watching, self.ended = True, False

    def stop(self) -> None:
        self.watching = False


transaction_watch = _TransactionWatch()


def _dbapi_in_transaction(dbapi_connection: Any) -> bool | None:
    """What the driver itself says: inside a transaction, or ``None`` if it cannot tell."""
    info = getattr(dbapi_connection, "info", None)
    status = getattr(info, "transaction_status", None)
    if status is not None:  # psycopg 3 (psycopg docs, "ConnectionInfo.transaction_status")
        return int(status) != 0  # 0 is IDLE: no transaction open
    if isinstance(dbapi_connection, sqlite3.Connection):
        return dbapi_connection.in_transaction
    return None


@functools.cache
def _track_connections() -> None:
    """Install the process-wide connection listeners: MySQL connection ids, and the transaction watch."""

    def connected(dbapi_connection: Any, _: Any) -> None:
        # PyMySQL's CONNECTION_ID(), or aiomysql's behind SQLAlchemy's adapter (AdaptedConnection.driver_connection).
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        thread_id = getattr(driver, "thread_id", None)
        if callable(thread_id) and _is_mysql(driver):
            sessions.mysql_connection_ids.add(int(thread_id()))
        if _on_connect_settings and _adapts(dbapi_connection, "asyncpg"):
            cursor = dbapi_connection.cursor()
            for name, value in _on_connect_settings.items():
                cursor.execute(f"SET {name} = '{value}'")  # our own settings: integers (milliseconds) and 'off'
            cursor.close()
            dbapi_connection.commit()  # the adapter opened a transaction: a rollback would undo the SETs

    def executing(connection: Connection, *_: Any) -> None:
        stopping.statement_started(connection.connection.dbapi_connection)  # a safe point for a deferred stop

    def executed(connection: Connection, *_: Any) -> None:
        stopping.statement_ended()
        if not transaction_watch.watching or not connection.in_transaction():
            return
        if _dbapi_in_transaction(connection.connection.dbapi_connection) is False:
            transaction_watch.ended = True  # the server's transaction is over while SQLAlchemy's is open

    def committed(_: Connection) -> None:
        if transaction_watch.watching:
            transaction_watch.ended = True

    event.listen(Pool, "connect", connected)
    event.listen(Engine, "before_cursor_execute", executing)
    event.listen(Engine, "after_cursor_execute", executed)
    event.listen(Engine, "commit", committed)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, or ``None`` when the driver gave none."""
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlstate", None)
    return str(code) if code else None


def _mysql_errno(orig: BaseException | None) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def classify(error: BaseException, *, at_connect: bool = False) -> Failure:  # noqa: PLR0911  (one return per case reads as a table)
    """Classify a database error: its SQLSTATE and whether it is connection-class.

    Connection-class means SQLSTATE class 08, 57P01-57P03, a refused connection,
    a name that does not resolve, or a connection SQLAlchemy found dead. Login
    and missing-database failures are not: retrying cannot fix them.

    Args:
        error: any exception; only SQLAlchemy's ``DBAPIError`` is a database error.
        at_connect: the error came from opening a connection.

    Returns:
        The classification.
    """
    if not isinstance(error, sa_exc.DBAPIError):
        return Failure(None, False)
    code = sqlstate(error)
    if code:
        return Failure(code, code.startswith(_CONNECTION_SQLSTATES))
    errno = _mysql_errno(error.orig)
    if errno in _MYSQL_CONNECTION_ERRNOS:
        return Failure("08001" if at_connect else "08006", True)
    if errno in _MYSQL_LOGIN_ERRNOS:
        return Failure(_MYSQL_LOGIN_ERRNOS[errno], False)
    if error.connection_invalidated:
        return Failure("08006", True)
    # libpq (psycopg) reports connection failures as text only; sqlite3 raises OperationalError for SQL errors.
    if errno is None and isinstance(error, sa_exc.OperationalError) and _from_libpq(error.orig):
        message = str(error.orig)
        for pattern, startup_code, retry in _LIBPQ_STARTUP_FAILURES:
            if pattern.search(message):
                return Failure(startup_code, retry)
        # psycopg: refused, unresolvable host, timed out, or closed by the server.
        return Failure("08001" if at_connect else "08006", True)
    return Failure(None, False)


def _from_libpq(orig: BaseException | None) -> bool:
    return type(orig).__module__.split(".")[0] == "psycopg"


def error_message(error: BaseException) -> str:
    """The first line of a driver's error message, without SQLAlchemy's wrapping."""
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip() or type(orig).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def connect(
    engine: Engine, *, retry_for: float = 0.0, on_retry: Callable[[], None] = lambda: None
) -> Iterator[Connection]:
    """Open one connection, retrying connection-class failures for up to ``retry_for`` seconds.

    Backoff is exponential with full jitter (tenacity's ``wait_random_exponential``),
    capped at 2 s, and stops before a wait would pass the deadline. Each retry is
    logged as ``database.retrying`` with the attempt number, the delay and the
    error class.

    Args:
        engine: from :func:`make_engine`.
        retry_for: total seconds to keep trying; 0 tries once.
        on_retry: called before each retry (the metrics count them).

    Yields:
        An open connection, closed on exit.

    Raises:
        DatabaseUnavailable: no connection within ``retry_for`` seconds.
        ConfigError: the server rejected the login or has no such database.
    """

    def log_retry(state: tenacity.RetryCallState) -> None:
        on_retry()
        error = state.outcome.exception() if state.outcome else None
        get_logger().warning(
            "database.retrying",
            attempt=state.attempt_number,
            delay_seconds=round(state.upcoming_sleep, 3),
            error_class=classify(error, at_connect=True).code if error else None,
            error=error_message(error) if error else None,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(lambda error: classify(error, at_connect=True).connection),
        stop=tenacity.stop_before_delay(retry_for),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=2),
        before_sleep=log_retry,
        reraise=True,
    )
    started = time.monotonic()
    try:
        connection = retrying(engine.connect)
    except sa_exc.DBAPIError as error:
        failure = classify(error, at_connect=True)
        where = redact(engine.url)
        if failure.code == "57014":  # query_canceled: the dialect's first queries ran past statement_timeout
            raise ConfigError(
                f"{where}: a query on connecting was cancelled by statement_timeout (SQLSTATE 57014); "
                "MIGRATION_STATEMENT_TIMEOUT, or options=-c statement_timeout in the URL, is too short"
            ) from None
        if not failure.connection:
            raise ConfigError(
                f"{where} rejected the connection (SQLSTATE {failure.code}): {error_message(error)}; "
                "check the user, password and database name in MIGRATION_DATABASE_URL"
            ) from None
        tried = f"tried for {time.monotonic() - started:.1f} s (MIGRATION_CONNECT_TIMEOUT={retry_for:g})"
        raise DatabaseUnavailable(f"cannot connect to {where}, {tried}: {error_message(error)}") from None
    with connection:
        yield connection


@contextlib.contextmanager
def losing_connection_raises() -> Iterator[None]:
    """Turn a connection-class error raised inside into :class:`ConnectionLost`.

    Raises:
        ConnectionLost: the database went away mid-run (restart, failover, reset).
    """
    try:
        yield
    except sa_exc.DBAPIError as error:
        failure = classify(error)
        if failure.connection:
            raise ConnectionLost(f"connection lost (SQLSTATE {failure.code}): {error_message(error)}") from error
        raise


def _end_read(connection: Connection) -> None:
    if connection.in_transaction():
        connection.rollback()


@contextlib.contextmanager
def reading(connection: Connection) -> Iterator[Connection]:
    """Reads on ``connection`` that leave its transaction as they found it.

    A transaction the reads begin (SQLAlchemy begins one on first use) is rolled back after
    them; one that was already open is left open, untouched: ``env.py`` may share this
    connection, and Alembic's own work in it (the version table it just made) must stay.
    """
    owned = not connection.in_transaction()
    try:
        yield connection
    finally:
        if owned and connection.in_transaction():
            connection.rollback()


def execute_statement(connection: Connection, statement: str) -> None:
    """Run one statement without parameters whose text may hold ``%`` (a quoted name: ``"per%cent"``).

    The pyformat drivers (psycopg, PyMySQL, mysqlclient) read ``%`` as a placeholder even when no
    parameters are given (SQLAlchemy passes an empty sequence), so it is doubled for them.
    """
    if connection.dialect.paramstyle in {"format", "pyformat"}:
        statement = statement.replace("%", "%%")
    connection.exec_driver_sql(statement)


def server_database_name(connection: Connection) -> str:
    """The database as the server names it, for the lock key.

    Two URL forms of one database (``/db`` and ``/?dbname=db``, or two host
    names) must give one lock key, so the name comes from the server, not from
    the URL text.

    Returns:
        PostgreSQL ``current_database()``; MySQL ``DATABASE()``; SQLite the
        database file's real path (or ``""`` / ``:memory:``).
    """
    try:
        if connection.dialect.name == "postgresql":
            return str(connection.exec_driver_sql("SELECT current_database()").scalar())
        if connection.dialect.name in ("mysql", "mariadb"):
            return str(connection.exec_driver_sql("SELECT DATABASE()").scalar())
    finally:
        _end_read(connection)
    path = connection.engine.url.database or ""
    return os.path.realpath(path) if path not in ("", ":memory:") else path


def read_only_reason(connection: Connection) -> str | None:
    """Why the server would refuse a migration's writes, or ``None`` if it accepts them.

    PostgreSQL: ``pg_is_in_recovery()`` (a hot standby) and ``transaction_read_only``
    (``default_transaction_read_only``; PostgreSQL docs, "9.27.4 Recovery Control
    Functions", "20.11.1 Statement Behavior"). MySQL: ``@@GLOBAL.read_only``.
    """
    try:
        if connection.dialect.name == "postgresql":
            recovery, read_only = connection.exec_driver_sql(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')"
            ).one()
            if recovery:
                return "the server is a hot standby (pg_is_in_recovery() is true)"
            if read_only == "on":
                return "transactions are read-only (default_transaction_read_only is on)"
        elif (
            connection.dialect.name in ("mysql", "mariadb")
            and connection.exec_driver_sql("SELECT @@GLOBAL.read_only").scalar()
        ):
            return "the server is read-only (@@GLOBAL.read_only is on)"
    finally:
        _end_read(connection)
    return None


def table_names(connection: Connection, schema: str | None = None) -> set[str]:
    """The tables in ``schema`` (default: the connection's default schema), from SQLAlchemy's inspector.

    Ends the transaction the inspector opened, so the connection can be handed on.
    """
    try:
        return set(sqlalchemy.inspect(connection).get_table_names(schema=schema))
    finally:
        if connection.in_transaction():
            connection.rollback()
