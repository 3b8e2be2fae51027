"""The one resolve step: from the frozen settings to what a run works on.

:func:`resolve` picks the migration tool and the database URL once, after the
settings are loaded and before any command runs. It sits above both
:mod:`runner.settings` and :mod:`runner.drivers`, so neither imports the other.

The database URL's chain, first wins (docs/configuration.md, "Which database")::

    --database-url > MIGRATION_DATABASE_URL (variable, secret file, .env files)
                   > MIGRATION_DATABASES_FILE at MIGRATION_DATABASE_INDEX
                   > DATABASE_URL > the tool's own fallback (Alembic: the ini's sqlalchemy.url)
                   > the development SQLite default

A Django project's URL is its ``DATABASES`` entry unless MIGRATION_DATABASE_URL
replaces it; :meth:`Target.with_project_url` takes it once the project is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import drivers, logs, urls
from runner.drivers import Driver
from runner.errors import ConfigError
from runner.settings import PREFIX, Settings

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

SQLITE_DEFAULT_URL = "sqlite:///./migration-runner.db"


@dataclass(frozen=True)
class Target:
    """The tool and the database of one run, resolved once.

    Attributes:
        tool: a name from :func:`runner.drivers.tools`.
        environment: ``MIGRATION_ENVIRONMENT``, for the error when no URL is known.
        source: where the URL came from, e.g. ``DATABASE_URL``; ``""`` when none is
            known, ``"not set: why"`` when the project that would give it failed.
        url_text: the URL as written (a secret: never in a repr or a log), or ``None``.
        databases: ``MIGRATION_DATABASES_FILE``'s entries, ``(line number, URL)``.
        database_index: which entry this run migrates, or ``None``.
    """

    tool: str
    environment: str
    source: str = ""
    url_text: str | None = dataclasses.field(default=None, repr=False)
    databases: tuple[tuple[int, str], ...] = dataclasses.field(default=(), repr=False)
    database_index: int | None = None

    @functools.cached_property
    def light_url(self) -> urls.DatabaseUrl:
        """The URL read without SQLAlchemy (:mod:`runner.urls`), parsed once.

        Raises:
            ConfigError: no database URL is configured for this environment.
        """
        return urls.parse(self._required())

    @functools.cached_property
    def shown_url(self) -> str:
        """The URL as the user wrote it, redacted: what messages show (:func:`urls.shown`).

        Raises:
            ConfigError: no database URL is configured for this environment.
        """
        self.light_url  # noqa: B018  (parsed first: a URL the parser refuses is never shown)
        return urls.shown(self._required())

    @functools.cached_property
    def url(self) -> URL:
        """The normalised URL as SQLAlchemy's ``URL`` (``postgres://`` → ``postgresql+psycopg://``), parsed once.

        Raises:
            ConfigError: no database URL is configured for this environment.
        """
        from runner import database  # noqa: PLC0415  (SQLAlchemy only when an engine is made)

        return database.parse_url(self._required())

    def _required(self) -> str:
        if self.url_text is None and self.databases:
            raise ConfigError(
                f"MIGRATION_DATABASES_FILE lists {len(self.databases)} database(s): set MIGRATION_DATABASE_INDEX "
                "(an Indexed Job sets JOB_COMPLETION_INDEX for it), or run every one with upgrade, check or wait --all"
            )
        if self.url_text is None:
            raise ConfigError(
                f"MIGRATION_DATABASE_URL is not set; it is required in the {self.environment} "
                "environment (or set DATABASE_URL, or a secret file migration_database_url)"
            )
        return self.url_text

    def with_url(self, raw: str, source: str, *, problem: str) -> Target:
        """This target with ``raw`` as its URL, from ``source``.

        Raises:
            ConfigError: ``problem: why`` when ``raw`` does not parse.
        """
        try:
            urls.parse(raw)
        except ValueError as error:
            raise ConfigError(f"{problem}: {error}") from None
        return dataclasses.replace(self, url_text=raw, source=source)

    def with_project_url(self, raw: str, source: str) -> Target:
        """This target with the URL a project configures itself (Django's ``DATABASES``).

        Raises:
            ConfigError: the URL does not parse.
        """
        return self.with_url(raw, source, problem=f"invalid database in {source}")

    def without_url(self, problem: str) -> Target:
        """This target, saying why no URL is known (for ``config``: the project that would supply it did not load)."""
        return dataclasses.replace(self, source=f"not set: {problem}")

    def shown(self, settings: Settings) -> dict[str, Any]:
        """What ``config`` prints: the settings (:meth:`Settings.redacted`) with the tool, the URL and their sources.

        Returns:
            One key per setting, named as its environment variable, and ``sources``.
        """
        shown = settings.redacted()
        sources = shown["sources"]
        shown[PREFIX + "DATABASE_URL"] = self.shown_url if self.url_text is not None else None
        sources[PREFIX + "DATABASE_URL"] = self.source or "not set"
        shown[PREFIX + "TOOL"] = self.tool
        if settings.tool == "auto":
            sources[PREFIX + "TOOL"] = "auto: found in the working directory and environment"
        module = importlib.import_module(f"runner.drivers.{self.tool}")
        for name, (value, source) in module.shown_settings(settings, settings.cwd).items():
            shown[PREFIX + name], sources[PREFIX + name] = value, source
        return shown


def resolve(settings: Settings, environ: Mapping[str, str] | None = None) -> Target:
    """The tool and the database URL of this run, each from the first source that has one.

    Args:
        settings: the loaded settings (:func:`runner.settings.load_settings`).
        environ: the process environment (``DJANGO_SETTINGS_MODULE``, ``DATABASE_URL``,
            ``JOB_COMPLETION_INDEX``); default ``os.environ``.

    Returns:
        The target. Its URL is ``None`` when only the project can give it (Django),
        or when ``--all`` runs every database of the file.

    Raises:
        ConfigError: an unknown tool or two projects found; a URL that does not parse;
            the databases file together with a URL, unreadable, or indexed past its end.
    """
    environ = os.environ if environ is None else environ
    tool = drivers.choose(settings.tool, cwd=settings.cwd, environ=environ, settings=settings)
    target = Target(tool=tool, environment=settings.environment)
    if settings.databases_file is not None:
        return _from_databases_file(target, settings, environ)
    if settings.database_index is not None:
        raise ConfigError(
            "MIGRATION_DATABASE_INDEX picks a line of MIGRATION_DATABASES_FILE, which is not set; "
            "set the file, or drop the index"
        )
    if settings.database_url is not None:
        found = settings.source_of("database_url")
        source = "MIGRATION_DATABASE_URL" if found == "environment" else found
        return dataclasses.replace(target, url_text=settings.database_url.get_secret_value(), source=source)
    for source, raw in _fallbacks(tool, settings, environ):  # the first one wins; later ones are not even read
        return target.with_url(raw, source, problem=f"invalid setting {source}")
    return target


def load_project(settings: Settings, target: Target) -> tuple[Driver, Target]:
    """Load the project with the target's tool; a project that configures its own database gives the URL.

    The URL of Django's ``DATABASES`` is taken unless the target names one, and
    its secrets are redacted from every log line from then on.

    Returns:
        ``(the project, the target with the project's URL)``.

    Raises:
        ConfigError: the project cannot be loaded, or its URL does not parse.
    """
    url = target.light_url if target.url_text is not None else None
    project = drivers.load(target.tool, settings=settings, cwd=settings.cwd, url=url)
    own_url = project.database_url()
    if own_url is None:
        return project, target
    target = target.with_project_url(*own_url)
    for secret in target.light_url.secrets():
        logs.add_secret(secret)
    return project, target


def _fallbacks(tool: str, settings: Settings, environ: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """``DATABASE_URL``, the tool's own fallback, then the development default; none for a tool with its own URL."""
    module = importlib.import_module(f"runner.drivers.{tool}")
    if module.HAS_OWN_URL:  # Django's DATABASES: the project gives it once loaded
        return
    if environ.get("DATABASE_URL"):
        yield "DATABASE_URL", environ["DATABASE_URL"]
    yield from module.fallback_urls(settings, settings.cwd)
    if settings.environment == "development":
        yield "the development default", SQLITE_DEFAULT_URL


def read_databases_file(path: Path) -> list[tuple[int, str]]:
    """The database URLs of a databases file, with their line numbers; blank lines and ``#`` comments skipped.

    Raises:
        ConfigError: the file cannot be read, a line is not a URL (named by its number, never echoed),
            or there is none.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM, as some editors write, is not part of line 1
    except (OSError, UnicodeDecodeError) as error:
        reason = (
            f"not UTF-8 at byte {error.start}"
            if isinstance(error, UnicodeDecodeError)
            else error.strerror or type(error).__name__
        )
        raise ConfigError(f"MIGRATION_DATABASES_FILE={str(path)!r} cannot be read ({reason})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            urls.parse(stripped)
        except ValueError as error:
            raise ConfigError(f"MIGRATION_DATABASES_FILE line {number}: {error}") from None
        entries.append((number, stripped))
    if not entries:
        raise ConfigError(
            f"MIGRATION_DATABASES_FILE={str(path)!r} has no database URL (blank lines and # comments do not count)"
        )
    return entries


def _from_databases_file(target: Target, settings: Settings, environ: Mapping[str, str]) -> Target:
    """Read ``MIGRATION_DATABASES_FILE`` and take the URL at the run's index, if it has one.

    Raises:
        ConfigError: a URL is configured too, the file is unusable, or the index is bad or past its end.
    """
    if settings.database_url is not None:
        raise ConfigError(
            "MIGRATION_DATABASES_FILE and a database URL are both set: use the file (MIGRATION_DATABASE_INDEX "
            "picks a line) or MIGRATION_DATABASE_URL, not both"
        )
    assert settings.databases_file is not None  # noqa: S101  (the caller checked)
    databases = tuple(read_databases_file(settings.databases_file))
    target = dataclasses.replace(target, databases=databases)
    index, named = settings.database_index, "MIGRATION_DATABASE_INDEX"
    if index is None and environ.get("JOB_COMPLETION_INDEX"):
        raw, named = environ["JOB_COMPLETION_INDEX"], "JOB_COMPLETION_INDEX"
        if not (raw.isascii() and raw.isdigit()):  # isdigit() and int() take Arabic-Indic digits too
            raise ConfigError(f"JOB_COMPLETION_INDEX={raw!r} is not an index (0, 1, 2, ...)")
        index = int(raw)
    if index is None:
        return target  # --all, or an error once a command needs the URL
    count = len(databases)
    if index >= count:
        raise ConfigError(
            f"{named}={index}: index {index} is past the end of MIGRATION_DATABASES_FILE, which lists {count} "
            f"database(s) (indexes 0-{count - 1}); is the Job's completions larger than the file?"
        )
    line, raw = databases[index]
    chosen = target.with_url(raw, f"MIGRATION_DATABASES_FILE index {index} (line {line})", problem=f"line {line}")
    return dataclasses.replace(chosen, database_index=index)
