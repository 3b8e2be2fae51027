"""The no-op check: is the database already at the target? Answered without SQLAlchemy or the migration tool.

Every pod start asks it, and the answer is almost always yes. The full path
(:func:`runner.commands.upgrade`) imports SQLAlchemy and the tool, loads the
whole project and opens an engine; this module answers from what the tool's
driver can read without importing the tool (``quick_heads``) and one query on
the tool's version table through the database's own DB-API driver (psycopg,
PyMySQL, sqlite3).

It answers only when sure. Every doubt (a configuration or a revision file the
driver cannot read plainly, an unusual URL, any error while connecting or
reading, a database that is not exactly at the heads) is ``None``, and the full
path decides, with its retries, its error classification and its exit codes.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from runner import drift, sessions, urls
from runner.target import Target, load_project

if TYPE_CHECKING:
    from runner.settings import Settings

# libpq's smallest useful connect_timeout (libpq docs, "connect_timeout"): a server that does not
# answer that fast is left to the full path and its retries.
CONNECT_TIMEOUT_SECONDS = 2


@runtime_checkable
class FilesFastPath(Protocol):
    """A driver module that answers the no-op without its tool (Alembic).

    The heads come from the revision files' text, the database's revisions from one query.
    Checked with ``isinstance``; the protocol is declared here, where it is used, so the
    drivers import nothing from this module.
    """

    def quick_heads(
        self, settings: Settings, cwd: Path, sources: dict[str, tuple[str, bytes]] | None = None
    ) -> tuple[str, ...] | None:
        """The heads, or ``None`` when unsure (the full path then decides)."""
        ...

    def quick_current(self, connection: Any, family: str, settings: Settings) -> tuple[str, ...] | None:
        """The database's revisions on a plain DB-API connection, or ``None`` when unsure."""
        ...


@runtime_checkable
class LoadedFastPath(Protocol):
    """A driver module that answers the no-op on the loaded project, without SQLAlchemy (Django)."""

    def quick_applied(self, project: Any, settings: Settings) -> tuple[str, ...] | None:
        """What is applied, if that is the heads; ``None`` when anything is pending or unsure.

        ``project`` is the loaded :class:`runner.drivers.Driver`, which also has ``quick_ledger_rows``.
        """
        ...


@dataclass(frozen=True)
class AtTarget:
    """The database is at the heads.

    Attributes:
        current: the database's revisions as the logs show them (the driver's ``summary``), sorted.
        heads: the project's heads, sorted.
        compared: every applied revision's file was compared with the ledger and none drifted.
    """

    current: tuple[str, ...]
    heads: tuple[str, ...]
    compared: bool = False


@dataclass(frozen=True)
class Verdict:
    """The no-op check's answer.

    Attributes:
        at_target: set when the database is at the heads; ``None``: take the full path.
        project: the project, when the check had to load it (Django); the full path reuses it.
        target: the run's target, with the URL that project configures itself, if it does.
    """

    at_target: AtTarget | None
    project: Any = None
    target: Target | None = None


def at_target(
    settings: Settings,
    target: Target,
    *,
    name: str,
    ready: Callable[[Target], None],
    ledger: bool = False,
    unfinished_only: bool = False,
) -> Verdict:
    """Whether the database is exactly at the project's heads; without an answer, the full path decides.

    Only for ``MIGRATION_TARGET=heads``. A driver module answers with
    ``quick_heads`` and ``quick_current`` (Alembic: no tool import) or with
    ``quick_applied`` on the loaded project (Django: the project is loaded, as
    it must be, but SQLAlchemy is not imported).

    Args:
        settings: the run's settings (the version table, the ledger, the drift setting).
        target: the run's tool and database URL.
        name: the sessions' ``application_name``.
        ready: called once the database URL is known, before the database is read (``run.started``).
        ledger: also read the ledger (``upgrade``, ``check``): the answer is yes only when it records
            every applied revision, no step is unfinished and no file drifted (:mod:`runner.drift`).
            An unchanged file costs a SHA-256 of its bytes, not a parse.
        unfinished_only: read the ledger only for an unfinished step (``wait``): the
            answer is yes only when the ledger can be read and no step is unfinished.

    Raises:
        ConfigError: the project cannot be loaded (Django), as on the full path.
    """
    if settings.target != "heads":
        return Verdict(None)
    module = importlib.import_module(f"runner.drivers.{target.tool}")
    if isinstance(module, LoadedFastPath):
        project, target = load_project(settings, target)
        ready(target)
        current = module.quick_applied(project, settings)
        return _loaded_verdict(
            project, current, settings, ledger=ledger, unfinished_only=unfinished_only, target=target
        )
    if target.url_text is None or not isinstance(module, FilesFastPath):
        return Verdict(None)
    read_heads, read_current = module.quick_heads, module.quick_current
    ready(target)
    query = None
    if ledger or unfinished_only:
        quote = drift.quote_for(target.light_url.family)
        schema, table = settings.version_table_schema, settings.version_table
        scope = _scope(table, schema)
        query = drift.select_statement(quote, settings.history_table, schema, target.tool, scope)
    read = _read(settings, target.light_url, read_current, name, query)
    current, rows = read if read is not None else (None, None)
    sources: dict[str, tuple[Path | str, bytes | None]] = {}
    heads = read_heads(settings, settings.cwd, sources) if current else None  # an empty database need not read files
    if not heads or current is None or len(set(current)) != len(current) or set(current) != set(heads):
        return Verdict(None)
    if (ledger or unfinished_only) and not _ledger_allows(rows, sources, settings, drift_too=ledger):
        return Verdict(None)  # at the heads, but no ledger, a drifted file, an unrecorded revision or unfinished step
    return Verdict(AtTarget(tuple(sorted(current)), heads, compared=_compares(settings, ledger)))


def _ledger_allows(
    rows: list[Any] | None, sources: dict[str, tuple[Path | str, bytes | None]], settings: Settings, *, drift_too: bool
) -> bool:
    """The ledger was read and blocks nothing: no unfinished step and, with ``drift_too``, see :func:`_ledger_clean`."""
    if rows is None:
        return False
    return _ledger_clean(rows, sources, settings) if drift_too else not drift.any_unfinished(rows)


def _loaded_verdict(
    project: Any,
    current: tuple[str, ...] | None,
    settings: Settings,
    *,
    ledger: bool,
    unfinished_only: bool,
    target: Target,
) -> Verdict:
    """The verdict for a driver that loaded the project to answer (Django), from what is applied."""
    undecided = Verdict(None, project, target)
    if not current:
        return undecided
    if ledger or unfinished_only:
        try:
            rows = project.quick_ledger_rows(settings.history_table)
        except Exception:  # no ledger yet, or any doubt: the full path decides
            return undecided
        if drift.any_unfinished(rows):
            return undecided
    if ledger:
        sources = {r: path for r in project.applied_revisions(current) if (path := project.source(r)) is not None}
        if not _ledger_clean(rows, {r: (path, None) for r, path in sources.items()}, settings):
            return undecided
    found = AtTarget(tuple(project.summary(current)), tuple(project.heads()), compared=_compares(settings, ledger))
    return Verdict(found, project, target)


def _scope(name: str, schema: str | None) -> str:
    """:func:`runner.ledger.scope_of`, without importing SQLAlchemy."""
    return f"{schema}.{name}" if schema else name


def _compares(settings: Settings, ledger: bool) -> bool:
    return ledger and settings.drift != "off"


def _ledger_clean(rows: list[Any], sources: dict[str, tuple[Path | str, bytes | None]], settings: Settings) -> bool:
    """The ledger records every applied revision, none unfinished, and no file drifted."""
    if drift.any_unfinished(rows):
        return False
    contents = {revision: data for revision, (_, data) in sources.items() if data is not None}
    comparison = drift.compare(
        drift.recorded(rows),
        {revision: path for revision, (path, _) in sources.items()},
        contents=contents,
        checksums=settings.drift != "off",
    )
    return not comparison.drifted and not comparison.unrecorded


def _read(
    settings: Settings,
    url: urls.DatabaseUrl,
    read_current: Callable[..., tuple[str, ...] | None],
    name: str,
    ledger_query: str | None,
) -> tuple[tuple[str, ...] | None, list[Any] | None] | None:
    """The version table's revisions and, if asked and any, the ledger's rows, on one session; None on any doubt."""
    try:
        with _connect(url, name) as connection:
            if connection is None:
                return None
            current = read_current(connection, url.family, settings)
            if not current or ledger_query is None:
                return current, None
            cursor = connection.cursor()
            try:
                cursor.execute(ledger_query)
                return current, list(cursor.fetchall())
            finally:
                cursor.close()
    except Exception:  # any doubt (no ledger yet included): the full path decides, and reports what is wrong
        return None


@contextlib.contextmanager
def _connect(url: urls.DatabaseUrl, name: str) -> Iterator[Any]:
    """A DB-API connection (autocommit) to the URL's database, or ``None`` for a URL this module leaves alone."""
    if url.family == "postgresql":
        import psycopg  # noqa: PLC0415

        parameters = _libpq_parameters(url, name)
        if parameters is None:
            yield None
            return
        with psycopg.connect(**parameters, autocommit=True) as connection:
            yield connection
    elif url.family == "mysql":
        if url.query or url.host is None:  # charset, SSL, sockets: SQLAlchemy's dialect knows them
            yield None
            return
        import pymysql  # noqa: PLC0415

        mysql = pymysql.connect(
            host=url.host,
            port=url.port or 3306,
            user=url.username or "",
            password=url.password or "",
            database=url.database_name,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            # The greeting and the login are reads: without a read bound a server that accepts and never
            # greets holds the run forever. The no-op's own queries are short, so the bound may stay.
            read_timeout=CONNECT_TIMEOUT_SECONDS,
            write_timeout=CONNECT_TIMEOUT_SECONDS,
            program_name=name,
            autocommit=True,
        )
        try:
            yield mysql
        finally:
            mysql.close()
    else:
        import sqlite3  # noqa: PLC0415

        path = url.database or ""
        if url.query or not path or path == ":memory:" or not os.path.isfile(path):
            yield None  # the full path creates a missing file; only it may
            return
        sqlite = sqlite3.connect(path, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            yield sqlite
        finally:
            sqlite.close()


def _libpq_parameters(url: urls.DatabaseUrl, name: str) -> dict[str, Any] | None:
    """The keyword parameters of ``psycopg.connect``, as SQLAlchemy builds them; None for repeated parameters."""
    if any(len(values) != 1 for values in url.query.values()):
        return None
    parameters: dict[str, Any] = {key: values[0] for key, values in url.query.items()}
    for key, value in (("host", url.host), ("port", url.port), ("user", url.username), ("password", url.password)):
        if value is not None:
            parameters[key] = value
    if url.database:
        parameters["dbname"] = url.database
    for key, value in urls.PG_NETWORK_BOUNDS.items():
        parameters.setdefault(key, value)
    parameters["application_name"] = name.encode()[: sessions.APPLICATION_NAME_MAX_BYTES].decode(errors="ignore")
    parameters["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    return parameters
