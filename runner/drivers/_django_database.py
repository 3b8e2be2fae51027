"""How the Django driver reaches the database: ``DATABASES`` entries as URLs and back, and Django's database errors.

The runner's own sessions (lock, ledger, read-only check) use the same database
as Django, through SQLAlchemy: :func:`url_of_entry` gives their URL, and
:func:`entry_of_url` points the entry at ``MIGRATION_DATABASE_URL``. Django's
database errors are told apart from the project's own by their class
(:func:`_is_database_error`), as Django's ``DatabaseErrorWrapper`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from runner import urls
from runner.drivers import (
    where,
)
from runner.errors import (
    ConfigError,
)

# Django and SQLAlchemy are imported where they are used: choosing the tool (`detect`) needs neither.
if TYPE_CHECKING:
    from sqlalchemy import exc as sa_exc


# ENGINE values of DATABASES and the runner's own URL for them (Django docs, "Settings > ENGINE").
_ENGINES = {
    "django.db.backends.postgresql": "postgresql",
    "django.db.backends.postgresql_psycopg2": "postgresql",
    "django.contrib.gis.db.backends.postgis": "postgresql",
    "django.db.backends.mysql": "mysql",
    "django.contrib.gis.db.backends.mysql": "mysql",
    "django.db.backends.sqlite3": "sqlite",
    "django.contrib.gis.db.backends.spatialite": "sqlite",
}


_ENGINE_OF_FAMILY = {
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "sqlite": "django.db.backends.sqlite3",
}


# OPTIONS that Django's PostgreSQL backend consumes itself; the rest are libpq parameters.
_DJANGO_PG_OPTIONS = frozenset({"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory"})


# OPTIONS of mysqlclient that are also PyMySQL URL parameters.
_MYSQL_URL_OPTIONS = ("charset", "unix_socket", "read_timeout", "write_timeout", "connect_timeout")


def url_of_entry(entry: Mapping[str, Any], where: str) -> str:
    """The SQLAlchemy URL of a ``DATABASES`` entry, for the runner's own sessions to the same database.

    Args:
        entry: the entry (ENGINE, NAME, USER, PASSWORD, HOST, PORT, OPTIONS).
        where: how to name it in errors, e.g. ``DATABASES['default'] in mysite.settings``.

    Returns:
        The URL text, password included (the caller redacts it).

    Raises:
        ConfigError: an engine the runner cannot lock, or an entry without a database name.
    """
    engine = str(entry.get("ENGINE") or "")
    family = _ENGINES.get(engine)
    if family is None:
        raise ConfigError(
            f"{where} uses ENGINE {engine!r}; the runner migrates PostgreSQL, MySQL/MariaDB and SQLite "
            f"({', '.join(sorted(_ENGINE_OF_FAMILY.values()))})"
        )
    name = str(entry.get("NAME") or "")
    options = dict(entry.get("OPTIONS") or {})
    if family == "sqlite":
        if not name or name == ":memory:" or name.startswith("file:"):
            raise ConfigError(f"{where}: NAME {name!r} is not a database file the runner can lock")
        return urls.DatabaseUrl("sqlite", database=name).render(hide_password=False)
    query: dict[str, str] = {}
    if family == "postgresql":
        name = name or str(options.get("dbname") or "")
        query = {
            key: str(value)
            for key, value in options.items()
            if key not in _DJANGO_PG_OPTIONS and isinstance(value, str | int) and key != "dbname"
        }
    else:
        query = {key: str(options[key]) for key in _MYSQL_URL_OPTIONS if key in options}
    if not name:
        raise ConfigError(f"{where} has no NAME; set it, or set MIGRATION_DATABASE_URL")
    host = str(entry.get("HOST") or "")
    if host.startswith("/"):  # a Unix socket directory (PostgreSQL) or socket file (MySQL)
        query["host" if family == "postgresql" else "unix_socket"] = host
        host = ""
    port = str(entry.get("PORT") or "")
    url = urls.DatabaseUrl(
        "postgresql+psycopg" if family == "postgresql" else "mysql+pymysql",
        username=str(entry.get("USER") or "") or None,
        password=str(entry.get("PASSWORD") or "") or None,
        host=host or None,
        port=int(port) if port.isdigit() else None,
        database=name,
        query={key: (value,) for key, value in query.items()},
    )
    return url.render(hide_password=False)


def entry_of_url(url: urls.DatabaseUrl) -> dict[str, Any]:
    """The connection fields of a ``DATABASES`` entry for ``url`` (ENGINE, NAME, USER, PASSWORD, HOST, PORT, OPTIONS).

    The URL's query parameters become OPTIONS: libpq parameters for PostgreSQL
    (``sslmode``, ``options``), ``charset`` and the like for MySQL.
    """
    family = url.family
    query = {key: values[-1] for key, values in url.query.items()}
    if family == "sqlite":
        return {"ENGINE": _ENGINE_OF_FAMILY["sqlite"], "NAME": url.database or "", "OPTIONS": {}}
    host = url.host or ""
    if family == "postgresql" and not host and "host" in query:
        host = query.pop("host")
    if family == "mysql" and "unix_socket" in query:
        host = query.pop("unix_socket")
    options: dict[str, Any] = dict(query)
    if family == "mysql":
        options = {key: value for key, value in query.items() if key in _MYSQL_URL_OPTIONS}
    return {
        "ENGINE": _ENGINE_OF_FAMILY[family],
        "NAME": url.database_name,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": host,
        "PORT": str(url.port or ""),
        "OPTIONS": options,
    }


def _pyformat_dialect(vendor: str) -> Any:
    """A SQLAlchemy dialect that compiles to ``%(name)s`` parameters, which Django's cursors take on every backend."""
    from sqlalchemy.dialects import mysql, postgresql, sqlite  # noqa: PLC0415

    module = {"postgresql": postgresql, "mysql": mysql, "sqlite": sqlite}[vendor]
    return module.dialect(paramstyle="pyformat")


def _is_database_error(error: BaseException) -> bool:
    from django.db import Error as DjangoDatabaseError  # noqa: PLC0415

    return isinstance(error, DjangoDatabaseError)


def _as_dbapi_error(error: BaseException) -> sa_exc.DBAPIError | None:
    """Django's wrapped database error as SQLAlchemy's, so :func:`runner.database.classify` reads it.

    Django re-raises the driver's exception as ``django.db.utils.<Class>`` with
    the original as ``__cause__`` (``DatabaseErrorWrapper``).
    """
    from sqlalchemy import exc as sa_exc  # noqa: PLC0415

    if isinstance(error, sa_exc.DBAPIError):
        return error
    if not _is_database_error(error):
        return None
    orig = error.__cause__ if isinstance(error.__cause__, Exception) else error
    return cast(sa_exc.DBAPIError, sa_exc.DBAPIError.instance(None, None, orig, Exception))


def _lost(error: sa_exc.DBAPIError) -> bool:
    # psycopg raises InterfaceError ("the connection is closed") once it has seen the connection die.
    from sqlalchemy import exc as sa_exc  # noqa: PLC0415

    return isinstance(error, sa_exc.InterfaceError)


def _close(session: Any) -> None:
    """Close Django's session (the next use reconnects); whatever closing a dead one raises is moot."""
    with contextlib.suppress(Exception):
        session.close()


def _where(error: BaseException) -> str:
    # Django imports settings, apps and migrations through importlib: its frames are not the project's.
    return where(error, also_skip=("importlib",))


def _described(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
