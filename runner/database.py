"""Database URLs, engines and connections, and reading the Alembic version table."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy
from alembic.runtime.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.pool import NullPool

from runner.errors import DatabaseUnavailable

SUPPORTED_DIALECTS = ("postgresql", "sqlite")
CONNECT_TIMEOUT_SECONDS = 10
# PostgreSQL truncates application_name to NAMEDATALEN - 1 = 63 bytes
# (PostgreSQL docs, "20.11.3 Other Defaults > application_name").
_APPLICATION_NAME_MAX = 63
# SQLSTATEs that mean "the connection is gone", not "the statement is wrong":
# class 08 and 57P01..57P03 (PostgreSQL docs, "Appendix A. Error Codes").
_CONNECTION_SQLSTATES = ("08", "57P01", "57P02", "57P03")


def parse_url(raw: str) -> URL:
    """Parse and normalise a database URL.

    ``postgres://`` and ``postgresql://`` select psycopg 3 (``postgresql+psycopg``).

    Args:
        raw: a SQLAlchemy URL, possibly with a password.

    Returns:
        The normalised URL.

    Raises:
        ValueError: the text is not a URL, or its dialect is unsupported. The
            message never repeats the URL, which may hold a password.

    """
    try:
        url = sqlalchemy.make_url(raw.strip())
    except sa_exc.ArgumentError:
        raise ValueError(
            "not a valid SQLAlchemy URL; expected dialect+driver://user:password@host:port/database"
        ) from None
    # Split the text: get_driver_name() would import the dialect, and "postgres" has none.
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend not in SUPPORTED_DIALECTS:
        raise ValueError(f"database dialect {backend!r} is not supported; use one of {', '.join(SUPPORTED_DIALECTS)}")
    if backend == "postgresql" and driver in ("", "psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def redact(url: URL) -> str:
    """Render a URL for logs: the password, if any, becomes ``***``."""
    return url.render_as_string(hide_password=True)


def database_name(url: URL) -> str:
    """The database a URL points at: the PostgreSQL database name or the SQLite path."""
    return url.database or ""


def make_engine(url: URL, *, application_name: str, autocommit: bool = False) -> Engine:
    """Create an engine without a connection pool (a run holds few connections).

    Args:
        url: a normalised URL from :func:`parse_url`.
        application_name: shown in ``pg_stat_activity`` so a waiting runner can
            name the holder of the lock; truncated to 63 bytes.
        autocommit: run every statement outside a transaction (for the lock
            connection, which must never sit inside a transaction).

    Returns:
        A SQLAlchemy engine; connecting is lazy.

    """
    connect_args: dict[str, object] = {}
    if url.get_backend_name() == "postgresql":
        name = application_name.encode()[:_APPLICATION_NAME_MAX].decode(errors="ignore")
        connect_args = {"application_name": name, "connect_timeout": CONNECT_TIMEOUT_SECONDS}
    options: dict[str, object] = {"poolclass": NullPool, "connect_args": connect_args}
    if autocommit:
        options["isolation_level"] = "AUTOCOMMIT"
    return sqlalchemy.create_engine(url, **options)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, or ``None`` when the driver gave none."""
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlstate", None)
    return str(code) if code else None


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` means the connection failed or was lost.

    True for SQLAlchemy's invalidated connections and for SQLSTATE class 08 and
    57P01-57P03; an ``OperationalError`` without SQLSTATE is how psycopg reports
    a refused connection or an unresolvable host.
    """
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    code = sqlstate(error)
    if code is None:
        return isinstance(error, sa_exc.OperationalError)
    return code.startswith(_CONNECTION_SQLSTATES)


def error_message(error: BaseException) -> str:
    """The first line of a driver's error message, without SQLAlchemy's wrapping."""
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip() or type(orig).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """Open one connection, translating a failure to connect.

    Args:
        engine: from :func:`make_engine`.

    Yields:
        An open connection, closed on exit.

    Raises:
        DatabaseUnavailable: the server refused, was unreachable, or rejected the
            login; the message names the redacted URL and the driver's reason.

    """
    try:
        connection = engine.connect()
    except sa_exc.DBAPIError as error:
        code = sqlstate(error)
        suffix = f" (SQLSTATE {code})" if code else ""
        raise DatabaseUnavailable(f"cannot connect to {redact(engine.url)}: {error_message(error)}{suffix}") from None
    with connection:
        yield connection


def read_heads(connection: Connection, *, version_table: str, schema: str | None) -> tuple[str, ...]:
    """Read the revisions recorded in the version table, read-only.

    Uses ``MigrationContext.get_current_heads()`` (Alembic API), which returns
    an empty tuple when the version table does not exist yet. Ends the
    transaction it opened, so the connection can be handed on.

    Args:
        connection: an open connection.
        version_table: name of the Alembic version table.
        schema: its schema, or ``None`` for the default.

    Returns:
        The revision ids, sorted.

    """
    context = MigrationContext.configure(
        connection, opts={"version_table": version_table, "version_table_schema": schema}
    )
    try:
        return tuple(sorted(context.get_current_heads()))
    finally:
        if connection.in_transaction():
            connection.rollback()
