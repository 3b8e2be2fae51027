"""Database URLs without importing SQLAlchemy: parsing, validation, redaction.

Importing SQLAlchemy costs about 100 ms, and a no-op run (the database already at
head, what every pod start sees) needs none of it. So the settings, the logs and
the no-op check read URLs here, with SQLAlchemy's own grammar and rendering
(``sqlalchemy.engine.url._parse_url`` and ``URL.render_as_string``, SQLAlchemy
2.x), and :mod:`runner.database` turns a URL into SQLAlchemy's ``URL`` only when
an engine is made. ``tests/test_urls.py`` pins both to SQLAlchemy's results on a
corpus of URLs.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from runner import DISTRIBUTION

# URL backend -> (family, default driver). MariaDB speaks the MySQL protocol.
BACKENDS = {
    "postgresql": ("postgresql", "psycopg"),
    "postgres": ("postgresql", "psycopg"),
    "mysql": ("mysql", "pymysql"),
    "mariadb": ("mysql", "pymysql"),
    "sqlite": ("sqlite", ""),
}
SUPPORTED_DIALECTS = ("postgresql", "mysql", "mariadb", "sqlite")
# The drivers a URL may name. The runner's own connections always use the first sync one of the
# family (psycopg 3 also serves psycopg2 URLs); env.py gets the URL as given, async drivers included.
SUPPORTED_DRIVERS = {
    "postgresql": ("", "psycopg", "psycopg2", "asyncpg"),
    "mysql": ("", "pymysql", "aiomysql", "asyncmy"),
    "sqlite": ("", "pysqlite", "aiosqlite"),
}
# Async driver -> the module it needs. SQLAlchemy's asyncio extension needs greenlet on top.
ASYNC_DRIVERS = {"asyncpg": "asyncpg", "aiomysql": "aiomysql", "asyncmy": "asyncmy", "aiosqlite": "aiosqlite"}
# Query parameters that carry a secret: dropped from every rendered URL, their values redacted.
SECRET_QUERY_KEYS = frozenset(
    {"password", "passwd", "pwd", "sslpassword", "secret", "token", "access_token", "api_key"}
)
# Where a URL may name its database instead of the path (libpq dbname; PyMySQL database/db).
DATABASE_QUERY_KEYS = {"postgresql": ("dbname",), "mysql": ("database", "db"), "sqlite": ()}

# TCP keepalives (seconds) on every PostgreSQL connection, and tcp_user_timeout (ms): unacknowledged
# data for that long ends the connection (libpq docs, "34.1.2 Parameter Key Words").
PG_NETWORK_BOUNDS = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}

# sqlalchemy.engine.url._parse_url, SQLAlchemy 2.x.
_PATTERN = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


@dataclass(frozen=True)
class DatabaseUrl:
    """The parts of a database URL, as SQLAlchemy's ``URL`` holds them (percent-decoded).

    Attributes:
        drivername: ``backend`` or ``backend+driver``.
        username, password, host, port, database: ``None`` when absent.
        query: each parameter's values, in order (most have one).
    """

    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """``postgresql``, ``mysql`` or ``sqlite``."""
        return BACKENDS[self.drivername.partition("+")[0]][0]

    @property
    def driver(self) -> str:
        """The driver after ``+``, or ``""``."""
        return self.drivername.partition("+")[2]

    def first(self, key: str) -> str | None:
        """The first value of query parameter ``key``, or ``None``."""
        values = self.query.get(key)
        return values[0] if values else None

    @property
    def database_name(self) -> str:
        """The database it points at: the path's name, a ``dbname``-like parameter, or the SQLite path."""
        if self.database:
            return self.database
        for key in DATABASE_QUERY_KEYS[self.family]:
            value = self.first(key)
            if value is not None:
                return value
        return ""

    def render(self, *, hide_password: bool = True) -> str:
        """The URL as text, as SQLAlchemy's ``URL.render_as_string`` renders it."""
        text = self.drivername + "://"
        if self.username is not None:
            text += quote(self.username, safe=" +")
            if self.password is not None:
                text += ":" + ("***" if hide_password else quote(self.password, safe=" +"))
            text += "@"
        if self.host is not None:
            text += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            text += f":{self.port}"
        if self.database is not None:
            text += "/" + quote(self.database, safe=" +/")
        if self.query:
            text += "?" + "&".join(
                f"{quote_plus(key)}={quote_plus(value)}" for key in sorted(self.query) for value in self.query[key]
            )
        return text

    def redacted(self) -> str:
        """For logs: the password as ``***``, the secret query parameters (:data:`SECRET_QUERY_KEYS`) dropped."""
        kept = {key: values for key, values in self.query.items() if key.lower() not in SECRET_QUERY_KEYS}
        return replace(self, query=kept).render(hide_password=True)

    def secrets(self) -> list[str]:
        """Every secret it carries, in each form it may take in a message, longest first.

        The password as given, percent-encoded, form-encoded and as SQLAlchemy
        renders it (which leaves ``+`` and spaces alone), and the values of the
        secret query parameters.
        """
        values = [self.password] if self.password else []
        for key, given in self.query.items():
            if key.lower() in SECRET_QUERY_KEYS:
                values.extend(given)
        forms: set[str] = set()
        for value in filter(None, values):
            forms |= {value, quote(value, safe=""), quote_plus(value), quote(value, safe=" +")}
        return sorted(forms, key=len, reverse=True)


def split(raw: str) -> DatabaseUrl:
    """Split a URL into its parts with SQLAlchemy's grammar, without checking what they name.

    Raises:
        ValueError: the text is not a URL. The message never repeats it: it may hold a password.
    """
    match = _PATTERN.match(raw.strip())
    if match is None:
        raise ValueError(_NOT_A_URL)
    parts = match.groupdict()
    query: dict[str, tuple[str, ...]] = {}
    if parts["query"] is not None:
        for key, value in parse_qsl(parts["query"]):
            query[key] = (*query.get(key, ()), value)
    port = parts["port"]
    try:
        number = int(port) if port else None
    except ValueError:  # an unencoded @ or : in the password leaves text where the port should be
        raise ValueError(_NOT_A_URL) from None
    return DatabaseUrl(
        drivername=parts["name"],
        username=unquote(parts["username"]) if parts["username"] is not None else None,
        password=unquote(parts["password"]) if parts["password"] is not None else None,
        host=parts["ipv4host"] or parts["ipv6host"],
        port=number,
        database=unquote(parts["database"]) if parts["database"] is not None else None,
        query=query,
    )


_NOT_A_URL = (
    "not a valid SQLAlchemy URL; expected dialect+driver://user:password@host:port/database "
    "(percent-encode @, : and / in the password)"
)


# The longest database name each server keeps: PostgreSQL's NAMEDATALEN - 1 bytes (PostgreSQL docs,
# "Identifiers and Key Words"; it would cut a longer name and connect to that); MySQL's 64 characters
# (MySQL docs, "Identifier Length Limits").
_NAME_LIMITS = {"postgresql": (63, "bytes"), "mysql": (64, "characters")}


# How the user wrote each database's URL, redacted, by what identifies the database (family, host, port,
# database, user): a message about a connection shows that, not the runner's own spelling of it (a
# driver added, keepalives and session settings in the query).
_AS_WRITTEN: dict[tuple[str, str | None, int | None, str, str | None], str] = {}


def _identity(url: DatabaseUrl) -> tuple[str, str | None, int | None, str, str | None]:
    return (url.family, url.host, url.port, url.database_name, url.username)


def shown(raw: str) -> str:
    """The URL as the user wrote it, redacted (:meth:`DatabaseUrl.redacted`), remembered for :func:`as_written`.

    Args:
        raw: a URL that :func:`parse` accepts.

    Returns:
        The text to show: the password as ``***``, the secret query parameters dropped.
    """
    written = split(raw)
    text = written.redacted()
    _AS_WRITTEN[_identity(written)] = text
    return text


def as_written(url: DatabaseUrl) -> str:
    """How the user wrote the URL of this database (see :func:`shown`), else ``url`` redacted."""
    return _AS_WRITTEN.get(_identity(url)) or url.redacted()


def parse(raw: str) -> DatabaseUrl:
    """Parse, check and normalise a database URL.

    ``postgres://`` and ``postgresql://`` select psycopg 3; ``mysql://`` and
    ``mariadb://`` select PyMySQL.

    Raises:
        ValueError: not a URL, an unsupported dialect or driver, a missing async
            driver, a port out of range, or no database named. The message never
            repeats the URL.
    """
    if "\x00" in raw:  # libpq and the servers cut a name at a NUL: another database than the one written
        raise ValueError("the URL holds a NUL character")
    url = split(raw)
    backend, _, driver = url.drivername.partition("+")
    if backend not in BACKENDS:
        raise ValueError(f"database dialect {backend!r} is not supported; use one of {', '.join(SUPPORTED_DIALECTS)}")
    family, default_driver = BACKENDS[backend]
    if driver not in SUPPORTED_DRIVERS[family]:
        usable = ", ".join(f"{backend}+{name}" for name in SUPPORTED_DRIVERS[family] if name)
        raise ValueError(f"driver {driver!r} is not supported for {backend}; use {backend}:// or {usable}")
    if driver in ASYNC_DRIVERS:
        _require_async_driver(driver)
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ValueError(f"port {url.port} is out of range (1-65535)")
    if family != "sqlite" and not url.database and not any(url.first(k) for k in DATABASE_QUERY_KEYS[family]):
        raise ValueError(
            "the URL names no database (e.g. postgresql://host/ or mysql://host/); "
            "add it: dialect://user:password@host:port/DATABASE"
        )
    limit = _NAME_LIMITS.get(family)
    if limit and url.database:
        count, unit = limit
        length = len(url.database.encode()) if unit == "bytes" else len(url.database)
        if length > count:
            raise ValueError(f"the database name is {length} {unit} long; {family} names are at most {count}")
    if family == "postgresql" and driver in ("", "psycopg2"):
        url = replace(url, drivername="postgresql+psycopg")
    elif family == "mysql" and not driver:
        url = replace(url, drivername=f"{backend}+{default_driver}")
    return url


def _require_async_driver(driver: str) -> None:
    """An async URL needs its driver and greenlet; say which package to install (never a crash later)."""
    for module, package in ((ASYNC_DRIVERS[driver], ASYNC_DRIVERS[driver]), ("greenlet", f"{DISTRIBUTION}[async]")):
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"env.py's URL needs the {module} package: pip install {package}")
